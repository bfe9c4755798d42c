"""The guest userland: a newc cpio with static busybox, an init script and kernel modules."""
from __future__ import annotations

import io
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root, digest, locked
from .errors import BuildError

BUSYBOX = Path("/bin/busybox")

INIT_SCRIPT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug
mkdir -p /tmp && mount -t tmpfs tmpfs /tmp 2>/dev/null
cd /root
echo kmemgdb-guest-ready
# The shell gets its own serial line: kernel messages stay on the console (ttyS0). It is the
# shell's controlling terminal (a session of its own: the subshell is no group leader, so
# setsid does not fork), so a Ctrl-C typed there interrupts the command running.
exec </dev/ttyS1 >/dev/ttyS1 2>&1
echo kmemgdb-guest-ready
while true; do (exec setsid -c /bin/sh); done
"""


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def newc_archive(entries: list[CpioEntry]) -> bytes:
    """An uncompressed newc ('070701') cpio archive, as the kernel unpacks into its rootfs."""
    out = io.BytesIO()
    for ino, entry in enumerate(entries + [CpioEntry("TRAILER!!!", 0)], start=1):
        name = entry.name.encode() + b"\0"
        fields = [ino, entry.mode, 0, 0, 1, 0, len(entry.data), 0, 0,
                  entry.rdev[0], entry.rdev[1], len(name), 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + name)
        out.write(b"\0" * (-out.tell() % 4))
        out.write(entry.data)
        out.write(b"\0" * (-out.tell() % 4))
    return out.getvalue()


def guest_entries(busybox: bytes, modules: dict[str, bytes]) -> list[CpioEntry]:
    """Files of the guest root: /init, /bin/busybox, /dev/console, /modules/NAME.ko."""
    d = stat.S_IFDIR | 0o755
    entries = [CpioEntry(name, d) for name in ("bin", "dev", "proc", "sys", "tmp", "root", "modules")]
    entries += [
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),  # init's stdio before devtmpfs
        CpioEntry("bin/busybox", stat.S_IFREG | 0o755, busybox),
        CpioEntry("init", stat.S_IFREG | 0o755, INIT_SCRIPT.encode()),
    ]
    entries += [CpioEntry(f"modules/{name}", stat.S_IFREG | 0o644, data)
                for name, data in sorted(modules.items())]
    return entries


def ensure_initramfs(modules: list[Path]) -> Path:
    """The cached initramfs holding MODULES (host .ko paths) under /modules/."""
    if not BUSYBOX.exists():
        raise BuildError("busybox-static is not installed: run scripts/install-deps.sh")
    blobs: dict[str, bytes] = {}
    for path in modules:
        if not path.is_file():
            raise BuildError(f"module {path} does not exist")
        if path.name in blobs and blobs[path.name] != path.read_bytes():
            raise BuildError(f"two different modules are named {path.name}")
        blobs[path.name] = path.read_bytes()
    busybox = BUSYBOX.read_bytes()
    key = digest(INIT_SCRIPT, busybox, *(p for item in sorted(blobs.items()) for p in item))
    out = cache_root() / "initramfs" / f"{key}.cpio"
    with locked(out.with_suffix(".lock")):
        if not out.exists():
            tmp = out.with_suffix(".tmp")
            tmp.write_bytes(newc_archive(guest_entries(busybox, blobs)))
            shutil.move(tmp, out)
    return out
