"""Build an out-of-tree module source directory against the guest kernel (cached by content)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .cache import cache_root, digest, locked, tree_digest
from .errors import BuildError
from .kernel import KernelBuild


def build_module(kernel: KernelBuild, source: Path) -> list[Path]:
    """Compile the Kbuild module(s) in SOURCE; returns the .ko paths (in the cache, not SOURCE)."""
    source = source.resolve()
    if not source.is_dir():
        raise BuildError(f"{source} is not a directory")
    if not any((source / n).exists() for n in ("Makefile", "Kbuild")):
        raise BuildError(f"{source} has no Makefile or Kbuild (obj-m += NAME.o)")
    key = digest(kernel.build_dir.name, tree_digest(source))
    out = cache_root() / "modules" / f"{source.name}-{key}"
    with locked(out.with_suffix(".lock")):
        done = out / ".kmemgdb-built"
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(source, out, ignore=shutil.ignore_patterns("*.o", "*.ko", ".*"))
            res = subprocess.run(["make", "-C", str(kernel.build_dir), f"M={out}",
                                  f"-j{os.cpu_count() or 1}", "modules"],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                raise BuildError(f"module build of {source} failed:\n{(res.stdout + res.stderr)[-3000:]}")
            done.touch()
    kos = sorted(out.glob("*.ko"))
    if not kos:
        raise BuildError(f"building {source} produced no .ko")
    return kos
