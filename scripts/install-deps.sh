#!/usr/bin/env bash
# Install what kmemgdb needs on Debian 12: guest tools, kernel build dependencies and a
# virtualenv made from /usr/bin/python3 (the interpreter gdb embeds). Idempotent and quiet
# when everything is present already.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${KMEMGDB_VENV:-$here/.venv}

apt_packages=(qemu-system-x86 gdb linux-source-6.1 busybox-static build-essential flex bison bc
              libelf-dev libssl-dev cpio xz-utils python3-venv kmod)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "kmemgdb: installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=$venv/.kmemgdb-installed
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  echo "kmemgdb: preparing virtualenv $venv"
  [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >/dev/null
  "$venv/bin/pip" install -q -e "$here[test]"
  touch "$stamp"
fi
