"""Build the guest kernel from Debian's linux-source-6.1, cached by source version and config.

The key is the source package version plus the content of every fragment in kernel-configs/:
a changed fragment gives a new key and a rebuild, an unchanged one reuses the build directory.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root, digest, locked
from .errors import BuildError

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "kernel-configs"
SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
BUILDER_VERSION = "1"  # bump when the build steps change in a way that needs a rebuild


@dataclass(frozen=True)
class KernelBuild:
    """A finished guest kernel build (an O= build directory that can also build modules)."""
    build_dir: Path
    release: str

    @property
    def bzimage(self) -> Path:
        return self.build_dir / "arch/x86/boot/bzImage"

    @property
    def vmlinux(self) -> Path:
        return self.build_dir / "vmlinux"

    @property
    def kmemleak_test_ko(self) -> Path:
        return self.build_dir / "samples/kmemleak/kmemleak-test.ko"

    def modules(self) -> list[Path]:
        return sorted(self.build_dir.rglob("*.ko"))

    def sample_modules(self) -> list[Path]:
        """Modules every guest gets in /modules/: the kernel's kmemleak-test.ko, when built."""
        return [ko for ko in (self.kmemleak_test_ko,) if ko.exists()]

    def config(self) -> dict[str, str]:
        return parse_config((self.build_dir / ".config").read_text())


def kernel_from_dir(path: Path) -> KernelBuild:
    """A kernel the user built: a tree or O= build directory with vmlinux, bzImage and .config
    (modules are built against it like against ours)."""
    path = path.expanduser().resolve()
    for need in ("vmlinux", "arch/x86/boot/bzImage", ".config"):
        if not (path / need).is_file():
            raise BuildError(f"--kernel {path}: no {need} there (give a built kernel tree or "
                             "its O= build directory)")
    release_file = path / "include/config/kernel.release"
    release = release_file.read_text().strip() if release_file.exists() else path.name
    return KernelBuild(path, release)


def source_version() -> str:
    """Debian version of linux-source-6.1, e.g. '6.1.192-2'."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out = ""
    if not out or not SOURCE_TARBALL.exists():
        raise BuildError(f"{SOURCE_PACKAGE} is not installed: run scripts/install-deps.sh "
                         f"(apt-get install {SOURCE_PACKAGE})")
    return out


def fragments() -> list[Path]:
    return sorted(CONFIG_DIR.glob("*.config"))


def build_key(version: str, fragment_paths: list[Path]) -> str:
    parts: list[bytes | str] = [BUILDER_VERSION, version]
    for path in fragment_paths:
        parts += [path.name, path.read_bytes()]
    return digest(*parts)


def parse_config(text: str) -> dict[str, str]:
    """Kconfig assignments of TEXT; '# CONFIG_X is not set' and 'CONFIG_X=n' both read as 'n'."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("# CONFIG_") and line.endswith(" is not set"):
            values[line[2:-len(" is not set")]] = "n"
        elif line.startswith("CONFIG_") and "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
    return values


def config_mismatches(wanted: dict[str, str], final: dict[str, str]) -> list[str]:
    """Options of WANTED that the final .config does not have as asked."""
    return [f"{name}={value} (got {final.get(name, 'n')})"
            for name, value in wanted.items() if final.get(name, "n") != value]


def ensure_kernel(progress=None) -> KernelBuild:
    """Return the cached build for the current source and fragments, building it if needed."""
    progress = progress or _stderr_progress
    version = source_version()
    frags = fragments()
    key = build_key(version, frags)
    root = cache_root()
    build_dir = root / "kernel" / key
    with locked(root / "kernel" / f"{key}.lock"):
        manifest = build_dir / "kmemgdb-build.json"
        if manifest.exists():
            return KernelBuild(build_dir, json.loads(manifest.read_text())["release"])
        src = _ensure_source(root, version, progress)
        _configure(src, build_dir, frags, progress)
        _make(src, build_dir, ["bzImage", "modules"], progress)
        release = (build_dir / "include/config/kernel.release").read_text().strip()
        manifest.write_text(json.dumps({"release": release, "source": version,
                                        "fragments": [p.name for p in frags]}))
        progress(f"kernel {release} built in {build_dir}")
        _prune_old_builds(root / "kernel", keep=build_dir)
        return KernelBuild(build_dir, release)


def _ensure_source(root: Path, version: str, progress) -> Path:
    dest = root / "src" / version
    tree = dest / SOURCE_PACKAGE
    marker = dest / ".unpacked"
    with locked(root / "src" / f"{version}.lock"):
        if not marker.exists():
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            progress(f"unpacking {SOURCE_TARBALL} ({version})")
            _run(["tar", "-xf", str(SOURCE_TARBALL), "-C", str(dest)], dest)
            marker.touch()
    return tree


def _configure(src: Path, build_dir: Path, frags: list[Path], progress) -> None:
    build_dir.mkdir(parents=True, exist_ok=True)
    progress("configuring: tinyconfig + " + ", ".join(p.name for p in frags))
    _run(["make", "-C", str(src), f"O={build_dir}", "tinyconfig"], build_dir)
    _run([str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(build_dir),
          str(build_dir / ".config"), *map(str, frags)], build_dir)
    _run(["make", "-C", str(src), f"O={build_dir}", "olddefconfig"], build_dir)
    wanted: dict[str, str] = {}
    for frag in frags:
        wanted.update(parse_config(frag.read_text()))
    bad = config_mismatches(wanted, parse_config((build_dir / ".config").read_text()))
    if bad:
        raise BuildError("kernel config did not take these fragment options: " + "; ".join(bad))


def _make(src: Path, build_dir: Path, targets: list[str], progress) -> None:
    jobs = str(os.cpu_count() or 1)
    log_path = build_dir / "kmemgdb-build.log"
    progress(f"building {' '.join(targets)} with {jobs} jobs (log: {log_path})")
    start = last = time.monotonic()
    compiled = 0
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["make", "-C", str(src), f"O={build_dir}", f"-j{jobs}", *targets],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if line.lstrip().startswith(("CC ", "LD ", "AS ")):
                compiled += 1
            now = time.monotonic()
            if now - last >= 10:
                progress(f"  ... {compiled} files compiled, {now - start:.0f} s")
                last = now
        rc = proc.wait()
    if rc != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise BuildError(f"kernel build failed (exit {rc}); last lines of {log_path}:\n{tail}")


def _run(argv: list[str], cwd: Path) -> str:
    res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise BuildError(f"{' '.join(argv[:3])} failed (exit {res.returncode}):\n"
                         + (res.stdout + res.stderr)[-3000:])
    return res.stdout


def _prune_old_builds(kernel_root: Path, keep: Path, keep_count: int = 2) -> None:
    """Drop all but the KEEP_COUNT newest builds: each holds about 1 GB of objects."""
    builds = sorted((p for p in kernel_root.iterdir() if p.is_dir()),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[keep_count:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def _stderr_progress(message: str) -> None:
    print(f"kmemgdb: {message}", file=sys.stderr, flush=True)
