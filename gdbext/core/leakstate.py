"""What kmemleak remembers between scans, on the host: annotations seen in the guest, cleared
and marked objects, suppressions, and the kernel's optional age rule."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .heap.model import MIN_COUNT_BLACK, MIN_COUNT_GRAY, Heap
from .leakreport import Leak, Suppression

NOT_LEAK, IGNORE, NO_SCAN, FREE_PART = "not_leak", "ignore", "no_scan", "free_part"
SCAN_AREA, UPDATE_TRACE = "scan_area", "update_trace"
AGE_RULE_SECONDS = 5.0

Identity = tuple[int, int, str, int]


def identity(leak: Leak) -> Identity:
    """What tells one allocation from a later one at the same address (jiffies if tracked)."""
    return (leak.address, leak.size, leak.cache or "", leak.jiffies or 0)


@dataclass
class Annotations:
    """kmemleak_* calls the guest made. Marks are keyed by the object start they named (kmemleak
    honours exact starts only); scan areas and updated traces by the address passed, which
    may be inside the object."""
    calls: dict[int, str] = field(default_factory=dict)
    areas: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    traces: dict[int, list[int]] = field(default_factory=dict)

    def record(self, kind: str, ptr: int, size: int = 0, trace: list[int] | None = None) -> None:
        """One call: kmemleak_KIND(ptr[, size]); TRACE is the caller's stack for update_trace."""
        if not ptr:
            return
        if kind == SCAN_AREA:
            self.areas.setdefault(ptr, []).append((ptr, size))
        elif kind == UPDATE_TRACE:
            self.traces[ptr] = list(trace or [])
        else:
            self.calls[ptr] = kind

    def apply(self, heap: Heap) -> None:
        """Set min_count, scanning and scan areas of annotated objects; forget annotations
        whose object is gone (freed since)."""
        for ptr, kind in list(self.calls.items()):
            i = heap.find(ptr)
            if i is None or int(heap.start[i]) != ptr:
                del self.calls[ptr]
                continue
            if kind == NOT_LEAK:
                heap.min_count[i] = MIN_COUNT_GRAY
            elif kind in (IGNORE, FREE_PART):
                heap.min_count[i] = MIN_COUNT_BLACK
            elif kind == NO_SCAN:
                heap.no_scan[i] = True
        for ptr, areas in list(self.areas.items()):
            i = heap.find(ptr)
            if i is None:
                del self.areas[ptr]
                continue
            end = int(heap.start[i]) + int(heap.size[i])
            heap.scan_areas.setdefault(i, []).extend((a, min(end, a + n) - a) for a, n in areas)
        for ptr in list(self.traces):
            if heap.find(ptr) is None:
                del self.traces[ptr]

    def trace_of(self, heap: Heap, i: int) -> list[int] | None:
        """The stack kmemleak_update_trace() recorded for object I, if any."""
        start, end = int(heap.start[i]), int(heap.start[i]) + int(heap.size[i])
        return next((t for p, t in self.traces.items() if start <= p < end), None)


@dataclass
class LeakState:
    cleared: set[Identity] = field(default_factory=set)
    mark: set[tuple[int, int, str]] | None = None   # live objects at `kmemleak mark`
    mark_jiffies: int | None = None
    suppressions: list[Suppression] = field(default_factory=list)
    age_rule: bool = False
    white_since: dict[Identity, tuple[int, float]] = field(default_factory=dict)
    scans: int = 0

    def observe(self, leaks: list[Leak], now: float | None = None) -> None:
        """Record one scan's unreferenced objects (for the age rule)."""
        now = time.monotonic() if now is None else now
        self.scans += 1
        seen = {identity(l) for l in leaks}
        self.white_since = {k: v for k, v in self.white_since.items() if k in seen}
        for key in seen:
            self.white_since.setdefault(key, (self.scans, now))

    def filter(self, leaks: list[Leak], now: float | None = None,
               since_mark: bool = False) -> tuple[list[Leak], int]:
        """Leaks to report and how many were suppressed. Indirect leaks follow their direct one."""
        now = time.monotonic() if now is None else now
        keep, suppressed = [], 0
        for leak in leaks:
            key = identity(leak)
            if key in self.cleared or (since_mark and not self.is_new(leak)):
                continue
            if self.age_rule and not self._old_enough(leak, key, now):
                continue
            if any(s.matches(leak) for s in self.suppressions):
                suppressed += 1
                continue
            keep.append(leak)
        kept = {l.address for l in keep if l.kind == "direct"}
        keep = [l for l in keep if l.kind == "direct" or l.owner in kept]
        return keep, suppressed

    def _old_enough(self, leak: Leak, key: Identity, now: float) -> bool:
        """mm/kmemleak.c: unreferenced in two scans in a row and older than 5 s."""
        first_scan, first_time = self.white_since.get(key, (self.scans, now))
        age = leak.age if leak.age is not None else now - first_time
        return first_scan < self.scans and age >= AGE_RULE_SECONDS

    def clear(self, leaks: list[Leak]) -> None:
        self.cleared |= {identity(l) for l in leaks}

    def set_mark(self, live: set[tuple[int, int, str]], jiffies: int | None) -> None:
        self.mark, self.mark_jiffies = live, jiffies

    def is_new(self, leak: Leak) -> bool:
        """Allocated after the mark: by allocation time when tracked, else by being an object
        the mark did not see (an address reused between two scans is missed)."""
        if self.mark is None:
            return True
        if leak.jiffies is not None and self.mark_jiffies is not None:
            return leak.jiffies > self.mark_jiffies
        return (leak.address, leak.size, leak.cache or "") not in self.mark
