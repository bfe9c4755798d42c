"""Set up per-connection services (module symbol tracking) once gdb is attached to a guest."""
from __future__ import annotations

import gdb

from . import target
from .hooks import delete_retired
from .kmemcheck import KMEMCHECK
from .kmemleak import KMEMLEAK
from .modules import MODULES
from .session import SESSION

_attached = False


def ensure_attached() -> None:
    """Install the module hooks and load symbols of modules already loaded (once per connection)."""
    global _attached
    if _attached or not target.connected() or not target.stopped():
        return
    _attached = True
    SESSION.symbolizer()   # read vmlinux's symbols now (about 1 s), not during the first scan
    MODULES.install()
    if KMEMLEAK.enabled and KMEMLEAK.hooks_wanted:
        KMEMLEAK.install_hooks()
    if target.paging_on():
        MODULES.load_all()


def _on_prompt() -> None:
    try:
        ensure_attached()
        KMEMCHECK.finish_cleanup()
        delete_retired()
    except gdb.error as exc:
        gdb.write(f"kmemgdb: could not set up module symbols: {exc}\n")
    except Exception as exc:  # a prompt hook must never break the prompt
        gdb.write(f"kmemgdb: {type(exc).__name__}: {exc}\n")


def _on_exit(_event) -> None:
    global _attached
    _attached = False
    MODULES.loaded.clear()
    KMEMCHECK.disable()
    SESSION.on_exit()


def register_events() -> None:
    gdb.events.before_prompt.connect(_on_prompt)
    gdb.events.exited.connect(_on_exit)
