"""kmemcheck's user-facing state: scope, options, suppressions, on and off.

What exists only while it is on lives in an Armed object (armed.py), made by enable() and
dropped by disable(); its reports stay readable after it is off."""
from __future__ import annotations

import fnmatch
import time

import gdb

from ...core.kmemcheck import Engine, Finding, KmemcheckError, Options, Scope
from ..hooks import record_error
from ..session import SESSION
from .armed import Armed
from .faults import Faults
from .modulescope import ModuleScope
from .slabs import Slabs
from .watchdog import WatchdogThread

DEFAULT_WATCHDOG = 60.0


class Suppression:
    """`kmemcheck suppress site=GLOB | cache=GLOB | field=struct.field`."""

    def __init__(self, text: str):
        key, sep, value = text.partition("=")
        if not sep or key not in ("site", "cache", "field") or not value:
            raise KmemcheckError(f"bad suppression {text!r}: use site=FUNCTION-GLOB, cache=GLOB "
                                 "or field=STRUCT.FIELD")
        self.key, self.value, self.text = key, value, text

    def matches(self, f: Finding) -> bool:
        d = f.details
        if self.key == "cache":
            return f.object is not None and any(
                fnmatch.fnmatchcase(name, self.value)
                for name in (f.object.cache, f.object.merged_into) if name)
        if self.key == "site":
            frames = d.get("origin_backtrace") or []
            return any(fr.symbol and fnmatch.fnmatchcase(fr.symbol.split("+")[0], self.value)
                       for fr in frames)
        field = d.get("field")
        if not field:
            return False
        path = field["path"].removeprefix("struct ").removeprefix("union ")
        return fnmatch.fnmatchcase(path, self.value)


class Kmemcheck:
    def __init__(self):
        self.mode = 0
        self.scope = Scope()
        self.options = Options()
        self.suppressions: list[Suppression] = []
        self.watchdog = DEFAULT_WATCHDOG
        self.armed: Armed | None = None
        self.last_engine: Engine | None = None
        self.cleanup_pending = False
        self._always_inserted: str | None = None

    @property
    def engine(self) -> Engine | None:
        armed = self.armed
        return armed.engine if armed is not None and not armed.off else None

    @property
    def pages(self) -> set[int]:
        return self.armed.pages.pages if self.armed is not None else set()

    def current_engine(self) -> Engine | None:
        """The running engine, or the last one after a turn-off (its reports stay readable)."""
        return self.armed.engine if self.armed is not None else self.last_engine

    # -- on / off ------------------------------------------------------------------------------
    def enable(self, mode: int) -> int:
        """Turn the checker on (1) or on in one-shot mode (2); returns the pages hidden."""
        if self.scope.empty:
            raise KmemcheckError("nothing is tracked: `kmemcheck track cache NAME` (or module NAME, "
                                 "all) first")
        self.options.one_shot = mode == 2
        if self.engine is not None:
            self.mode = mode
            return 0
        self.finish_cleanup()
        armed = Armed(self)
        self.armed, self.mode = armed, mode
        try:
            self._always_inserted = "on" if gdb.parameter("breakpoint always-inserted") is True else "off"
            # Saves the remove/insert packets around every stop.
            gdb.execute("set breakpoint always-inserted on", to_string=True)
            armed.faults = Faults(armed)
            armed.slabs = Slabs(armed)
            armed.modules = ModuleScope(armed)
            hidden = armed.slabs.hide_caches(armed.slabs.tracked_caches())
            if self.watchdog:
                armed.watch = WatchdogThread(self.watchdog)
        except BaseException:
            self.disable()
            raise
        return hidden

    def disable(self) -> int:
        """Turn off: every page kmemcheck hid is shown again; the guest keeps running."""
        armed, self.armed = self.armed, None
        shown = 0
        if armed is not None:
            if armed.faults is not None and not armed.off:
                armed.faults.drain_in_flight()
            shown = armed.disarm()
            if armed.modules is not None:
                armed.modules.detach()
            if armed.watch is not None:
                armed.watch.close()
            armed.engine.calls.clear()
            self.last_engine = armed.engine
        if self._always_inserted is not None:
            gdb.execute(f"set breakpoint always-inserted {self._always_inserted}", to_string=True)
            self._always_inserted = None
        self.mode = 0
        self.cleanup_pending = False
        return shown

    def apply_scope(self) -> int:
        """While on: hide the slabs of caches that became tracked, show those no longer tracked,
        hook modules that joined the scope. Returns the pages hidden."""
        armed = self.armed
        if armed is None or armed.off:
            return 0
        armed.faults.drain_in_flight()
        armed.modules.follow_scope()
        caches = armed.slabs.tracked_caches()
        known = set()
        for region in {r.start: r for r in armed.engine.heap.regions.values()}.values():
            if region.cache is None:
                continue
            region.pinned = region.cache.address in caches
            if region.pinned:
                known.add(region.cache.address)
            elif not armed.engine.heap.is_pinned(region):
                armed.slabs.release(region)
        return armed.slabs.hide_caches({a: c for a, c in caches.items() if a not in known})

    # -- engine callbacks ------------------------------------------------------------------------
    def in_scope(self, cache) -> bool:
        """A cache whose every object is watched: tracked by name, or a scoped module's own."""
        if self.scope.tracks_cache(cache.name):
            return True
        armed = self.armed
        return armed is not None and armed.modules is not None and armed.modules.own_cache(cache.address)

    def keep(self, finding: Finding) -> bool:
        from .details import describe_finding
        describe_finding(finding)
        if self.options.bitfield_ok and finding.details.get("field", {}).get("kind") == "bitfield" \
                and finding.kind == "uninitialized":
            return False
        return not any(s.matches(finding) for s in self.suppressions)

    # -- events ------------------------------------------------------------------------------------
    def on_stop(self, event) -> None:
        armed = self.armed
        if armed is None or armed.off or armed.faults is None:
            return
        if isinstance(event, gdb.BreakpointEvent) and any(b in armed.hooks for b in event.breakpoints):
            return
        try:
            pc = int(gdb.selected_frame().pc())
        except gdb.error:
            return
        armed.faults.landed(pc)

    def finish_cleanup(self) -> None:
        """At a prompt: finish a turn-off that happened inside a stop (one-shot, error,
        watchdog) and delete hooks whose code is gone."""
        armed = self.armed
        watch = armed.watch if armed is not None else None
        if watch is not None and watch.reason:
            self._watchdog_fired(armed, watch.reason)
            return
        if self.cleanup_pending:
            self.disable()
        elif armed is not None and armed.modules is not None:
            armed.modules.delete_disarmed()

    def _watchdog_fired(self, armed: Armed, reason: str) -> None:
        lines = [f"kmemcheck watchdog: no progress for {self.watchdog:g} s: {reason}"]
        lines.append("hook stops: " + ", ".join(f"{name} {n}" for name, n in
                                                 sorted(armed.counts.items())) or "none")
        st = armed.engine.stats
        lines.append(f"tracked accesses: {st.faults} ({st.emulated} emulated, {st.stepped} "
                     f"single-stepped, {st.allocator} by the allocator)")
        lines.append("last handled faults (newest last):")
        symbolizer = SESSION.symbolizer()

        def name(pc: int) -> str:
            located = symbolizer.lookup(pc)
            return str(located) if located else ""
        lines += armed.log.render(time.monotonic(), name) or ["  none"]
        text = "\n".join(lines)
        record_error(text)
        shown = self.disable()
        gdb.write(f"kmemcheck: off, {shown} hidden page(s) shown again\n")


KMEMCHECK = Kmemcheck()


def register_events() -> None:
    gdb.events.stop.connect(KMEMCHECK.on_stop)
