"""Names commands complete: the stopped guest's slab caches and modules, and the modules of
`kmemgdb module-path`. Read once per stop, so that each TAB is instant."""
from __future__ import annotations

import os

import gdb

from ..core.completion import ko_names
from ..core.kernel import list_modules, slab_cache_names
from . import settings, target
from .session import SESSION


class GuestNames:
    def __init__(self):
        self._caches: list[str] | None = None
        self._modules: list[str] | None = None
        self._ko: tuple[str, list[str]] | None = None     # (module-path, names found there)

    def forget(self, _event=None) -> None:
        self._caches = self._modules = self._ko = None

    def caches(self) -> list[str]:
        if not _guest_stopped():
            return []
        if self._caches is None:
            self._caches = slab_cache_names(SESSION.vmem(), SESSION.layout())
        return self._caches

    def modules(self) -> list[str]:
        """Loaded modules, and those kmemgdb finds a .ko of (which may be loaded later)."""
        if self._modules is None and _guest_stopped():
            self._modules = [m.name for m in list_modules(SESSION.vmem(), SESSION.layout())]
        return sorted(set(self._modules or []) | set(self._ko_names()))

    def _ko_names(self) -> list[str]:
        dirs = settings.module_path()
        key = ":".join(dirs)
        if self._ko is None or self._ko[0] != key:
            self._ko = (key, ko_names(f for d in dirs for _, _, files in os.walk(d) for f in files))
        return self._ko[1]


def _guest_stopped() -> bool:
    return target.connected() and target.stopped()


GUEST_NAMES = GuestNames()


def register_events() -> None:
    gdb.events.stop.connect(GUEST_NAMES.forget)
    gdb.events.cont.connect(GUEST_NAMES.forget)
