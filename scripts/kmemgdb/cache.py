"""Where kmemgdb keeps builds between runs, and a lock so parallel runs share one build."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """$KMEMGDB_CACHE, else $XDG_CACHE_HOME/kmemgdb, else ~/.cache/kmemgdb."""
    explicit = os.environ.get("KMEMGDB_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "kmemgdb"


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on PATH (created if needed) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def digest(*parts: bytes | str) -> str:
    """A short stable hash of PARTS, used as a cache key."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


def tree_digest(root: Path) -> str:
    """Hash of every regular file under ROOT (names and contents), ignoring build products."""
    parts: list[bytes | str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if _is_build_product(rel):
            continue
        parts += [rel, path.read_bytes()]
    return digest(*parts)


def _is_build_product(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return (name.endswith((".o", ".ko", ".mod", ".mod.c", ".cmd", ".order", ".symvers", ".a"))
            or name.startswith("."))
