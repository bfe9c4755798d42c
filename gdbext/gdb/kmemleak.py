"""Host-side kmemleak in gdb: annotation hooks, scans, and the state between them."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import gdb

from ..core import leaks as L
from ..core import roots as R
from ..core.heap.context import GuestContext
from ..core.heap.model import KIND_NAMES, Heap, Track
from ..core.heap.tracks import read_alloc_track, tracks_enabled
from ..core.heap.walk import Snapshot, walk_heap
from ..core.kernel import list_modules
from ..core.percpu import first_chunk_area, percpu_roots
from ..core.leakreport import Leak
from ..core.leakstate import FREE_PART, IGNORE, NO_SCAN, NOT_LEAK, Annotations, LeakState
from . import target
from .heapctx import guest_context, vcpu_registers
from .symbolize import frame_for

ANNOTATIONS = {"kmemleak_not_leak": NOT_LEAK, "kmemleak_ignore": IGNORE,
               "kmemleak_no_scan": NO_SCAN, "kmemleak_free_part": FREE_PART}


class _AnnotationHook(gdb.Breakpoint):
    """Silent breakpoint at a kmemleak_* entry: record (ptr) and let the guest go on.
    These calls are rare (module loads, a few init paths), so the stops are too."""

    def __init__(self, function: str, kind: str, annotations: Annotations):
        super().__init__(f"*{function}", internal=True)
        self.silent = True
        self.kind = kind
        self.annotations = annotations

    def stop(self) -> bool:
        frame = gdb.newest_frame()
        target.HOOK_STOPS[0] += 1
        self.annotations.record(self.kind, int(frame.read_register("rdi")) & (1 << 64) - 1,
                                int(frame.read_register("rsi")) & (1 << 64) - 1)
        return False


@dataclass
class ScanOutcome:
    snapshot: Snapshot
    result: L.ScanResult
    root_names: list[str]
    leaks: list[Leak]
    seconds: float
    notes: list[str] = field(default_factory=list)


class Kmemleak:
    def __init__(self):
        self.enabled = True
        self.hooks_wanted = True
        self.stack_scan = True
        self.state = LeakState()
        self.annotations = Annotations()
        self.hooks: list[_AnnotationHook] = []
        self.last: ScanOutcome | None = None

    def install_hooks(self) -> None:
        if self.hooks:
            return
        for function, kind in ANNOTATIONS.items():
            try:
                self.hooks.append(_AnnotationHook(function, kind, self.annotations))
            except gdb.error:
                pass       # kernels without CONFIG_DEBUG_KMEMLEAK inline these away

    def remove_hooks(self) -> None:
        for hook in self.hooks:
            hook.delete()
        self.hooks = []

    # -- scanning ---------------------------------------------------------------------------
    def scan(self) -> ScanOutcome:
        start = time.perf_counter()
        ctx = guest_context()
        modules = list_modules(ctx.vmem, ctx.layout)
        snap = walk_heap(ctx, modules)
        heap = snap.heap
        self.annotations.apply(heap)
        task_list = R.tasks(ctx)       # walked once: stacks, roots and report names use it
        R.settle_stacks(ctx, heap, task_list)
        roots = (R.section_roots(ctx) + percpu_roots(ctx) + R.module_roots(ctx, modules)
                 + R.reserved_roots(ctx, snap.memmap, [first_chunk_area(ctx)]))
        if self.stack_scan:
            roots += R.stack_roots(ctx, task_list)
        pages = L.PageStructs(snap.memmap, R.page_struct_rows(ctx, snap.memmap))
        result = L.scan(ctx, heap, roots, vcpu_registers(), pages)
        leaks = self._leaks(Describer(ctx, heap, task_list), result)
        seconds = time.perf_counter() - start
        outcome = ScanOutcome(snap, result, L.root_names(roots), leaks, seconds)
        if not any(tracks_enabled(c) for c in heap.caches):
            outcome.notes.append("no SLUB user tracking in this guest: boot it with slub_debug=U "
                                 "for allocation backtraces, pid and age of slab objects")
        outcome.notes += [f"heap walk: {e}" for e in heap.errors]
        self.state.observe(leaks)
        self.last = outcome
        return outcome

    def _leaks(self, describe: "Describer", result: L.ScanResult) -> list[Leak]:
        heap = describe.heap
        out = []
        sizes = {}
        for i in result.leaks.tolist():
            owner = int(result.owner[i])
            if not result.direct[i]:
                n, b = sizes.get(owner, (0, 0))
                sizes[owner] = (n + 1, b + int(heap.size[i]))
            out.append(describe(i, "direct" if result.direct[i] else "indirect",
                                None if result.direct[i] else int(heap.start[owner])))
        for leak, i in zip(out, result.leaks.tolist()):
            if leak.kind == "direct":
                leak.indirect_count, leak.indirect_bytes = sizes.get(i, (0, 0))
        return out

    def suspects(self, outcome: ScanOutcome) -> tuple[int, int]:
        """(direct leaks to report, suppressed leaks) of a scan, after clear/suppressions."""
        leaks, suppressed = self.state.filter(outcome.leaks)
        return sum(1 for l in leaks if l.kind == "direct"), suppressed

    def live_objects(self) -> set[tuple[int, int, str]]:
        heap = self.last.snapshot.heap if self.last else None
        if heap is None:
            return set()
        names = [heap.caches[c].name if c >= 0 else "" for c in heap.cache.tolist()]
        return set(zip(heap.start.tolist(), heap.size.tolist(), names))


def jiffies_now(ctx: GuestContext) -> int:
    return ctx.vmem.u64(ctx.layout.sym("jiffies_64"))


class Describer:
    """Turns heap rows into Leak records: contents, allocation track, backtrace, task."""

    def __init__(self, ctx: GuestContext, heap: Heap, task_list: list[R.Task] | None = None):
        self.ctx, self.heap = ctx, heap
        self.jiffies = jiffies_now(ctx)
        lay = ctx.layout
        tick_nsec = ctx.vmem.u64(lay.sym("tick_nsec")) if lay.has_sym("tick_nsec") else 0
        self.hz = round(1e9 / tick_nsec) if tick_nsec else 0     # tick_nsec = NSEC_PER_SEC / HZ
        self.comms = {pid: comm for _, pid, comm in (R.tasks(ctx) if task_list is None else task_list)}

    def __call__(self, i: int, kind: str, owner: int | None) -> Leak:
        heap, ctx = self.heap, self.ctx
        start, size = int(heap.start[i]), int(heap.size[i])
        cache = heap.caches[heap.cache[i]] if heap.cache[i] >= 0 else None
        leak = Leak(start, size, kind, KIND_NAMES[int(heap.kind[i])], cache.name if cache else None,
                    ctx.vmem.read(start, min(32, size)), owner=owner)
        extra = heap.extra.get(i)
        track: Track | None = read_alloc_track(ctx, cache, start) if cache else None
        if track:
            leak.pid, leak.jiffies = track.pid, track.when
            leak.comm = self.comms.get(track.pid)
            leak.age = ((self.jiffies - track.when) & (1 << 64) - 1) / self.hz if self.hz else None
            leak.backtrace = [frame_for(pc) for pc in (track.stack or [track.addr])]
        elif extra and extra.caller:
            leak.backtrace = [frame_for(extra.caller)]
        return leak


class PeriodicScan:
    """`kmemleak scan=SECS`: every SECS seconds of a running guest, interrupt it, scan, and let it
    go on. A timer thread may only post events to gdb's main loop; the scan runs in the stop
    event and the resume is posted again, so the user's own Ctrl-C stops stay theirs."""

    def __init__(self, service: Kmemleak):
        self.service = service
        self.interval = 0.0
        self.timer: threading.Timer | None = None
        self.pending = False
        self.count = 0
        gdb.events.stop.connect(self._on_stop)

    def start(self, seconds: float) -> None:
        self.stop()
        self.interval = seconds
        self._arm()

    def stop(self) -> None:
        self.interval = 0.0
        if self.timer:
            self.timer.cancel()
            self.timer = None

    def _arm(self) -> None:
        if self.interval > 0:
            self.timer = threading.Timer(self.interval, lambda: gdb.post_event(self._due))
            self.timer.daemon = True
            self.timer.start()

    def _due(self) -> None:
        if self.interval <= 0:
            return
        if target.connected() and not target.stopped():
            self.pending = True
            gdb.execute("interrupt", to_string=True)
        else:
            self._arm()          # the guest is stopped by the user: try again later

    def _on_stop(self, _event) -> None:
        if not self.pending:
            return
        self.pending = False
        self.count += 1
        try:
            outcome = self.service.scan()
            direct, _ = self.service.suspects(outcome)
            gdb.write(f"kmemleak: periodic scan {self.count}: {direct} suspected memory leak(s) "
                      f"in {outcome.seconds * 1000:.0f} ms (see `kmemleak`)\n")
        except Exception as exc:     # a failed scan must not leave the guest stopped
            gdb.write(f"kmemleak: periodic scan failed: {exc}\n")
        gdb.post_event(lambda: gdb.execute("continue"))
        self._arm()


KMEMLEAK = Kmemleak()
PERIODIC: PeriodicScan | None = None


def periodic() -> PeriodicScan:
    global PERIODIC
    if PERIODIC is None:
        PERIODIC = PeriodicScan(KMEMLEAK)
    return PERIODIC
