"""Host-side kmemleak in gdb: annotation hooks, scans, and the state between them."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import gdb

from ..core import leaks as L
from ..core import roots as R
from ..core.allocsites import CACHE_CREATORS
from ..core.heap.context import PAGE_SIZE, GuestContext
from ..core.heap.model import KIND_NAMES, CacheInfo, Heap, HeapError
from ..core.heap.pageowner import PageOwner, page_owner, requested_from, task_names
from ..core.heap.tracks import ALLOC, FREE, SLAB_STORE_USER, read_track, tracks_enabled
from ..core.heap.slub import cache_aliases
from ..core.heap.walk import Snapshot, walk_heap
from ..core.kernel import list_modules, system_running
from ..core.leakreport import HeapEvent, HeapFinding, Leak
from ..core.leakstate import (FREE_PART, IGNORE, NO_SCAN, NOT_LEAK, SCAN_AREA, UPDATE_TRACE,
                              Annotations, LeakState)
from ..core.memory import MemoryError_
from ..core.paging import PagingError
from ..core.percpu import first_chunk_area, percpu_roots
from ..core.roots import current_task, task_identity
from . import target
from .callsites import Call, CallWatch
from .callstack import stack_backtrace
from .heapctx import guest_context, vcpu_registers
from .modules import MODULES
from .session import SESSION
from .symbolize import frame_for

ANNOTATIONS = {"kmemleak_not_leak": NOT_LEAK, "kmemleak_ignore": IGNORE,
               "kmemleak_no_scan": NO_SCAN, "kmemleak_free_part": FREE_PART,
               "kmemleak_scan_area": SCAN_AREA, "kmemleak_update_trace": UPDATE_TRACE}
# Kernel callers whose annotation is applied as a rule (slub.SCAN_FROM_MEMBER, roots.
# kfree_rcu_roots): a hook there would stop the guest on every vmalloc or kfree_rcu().
RULED_CALLERS = frozenset({"alloc_vmap_area", "kvfree_call_rcu"})
NO_ANNOTATIONS = ("this kernel has no kmemleak annotations to watch (CONFIG_DEBUG_KMEMLEAK is "
                  "off): objects its code marks with kmemleak_not_leak() or kmemleak_ignore() "
                  "may be reported")


class TaskNames:
    """pid -> comm of the tasks that were running at kmemgdb's stops: module load and unload
    (insmod, rmmod, modprobe), a module's annotation calls and cache creations. SLUB's track
    keeps only a pid, and the task that leaked is often gone by the scan (every insmod). No
    stop of its own: QEMU 7.2 checks every breakpoint on every lookup of translated code, so
    each costs the whole guest about 3 % (measured); names are taken where it stops anyway."""

    def __init__(self):
        self.names: dict[int, str] = {}

    def install(self) -> None:
        for listeners in (MODULES.load_listeners, MODULES.unload_listeners):
            if self.note_current not in listeners:
                listeners.append(self.note_current)

    def remove(self) -> None:
        for listeners in (MODULES.load_listeners, MODULES.unload_listeners):
            if self.note_current in listeners:
                listeners.remove(self.note_current)

    def note_current(self, _module=None) -> None:
        vmem, layout = SESSION.vmem(), SESSION.layout()
        pid, comm = task_identity(vmem, layout, current_task(vmem, layout, target.register("gs_base")))
        self.names[pid] = comm


@dataclass
class ScanOutcome:
    snapshot: Snapshot
    result: L.ScanResult
    root_names: list[str]
    leaks: list[Leak]
    seconds: float
    notes: list[str] = field(default_factory=list)
    heap_findings: list[HeapFinding] = field(default_factory=list)


class Kmemleak:
    def __init__(self):
        self.enabled = True
        self.hooks_wanted = True
        self.stack_scan = True
        self.state = LeakState()
        self.annotations = Annotations()
        self.watch: CallWatch | None = None
        self.cache_watch: CallWatch | None = None
        self.tasks = TaskNames()
        self.last: ScanOutcome | None = None

    @property
    def hooks(self) -> bool:
        return self.watch is not None

    def install_hooks(self) -> None:
        """Watch the annotation calls of every module, at the call sites, and those of vmlinux
        until boot is over (the kernel's own annotations are boot-time ones, or rules)."""
        self.tasks.install()
        if self.watch is None:
            self.watch = CallWatch("kmemleak annotation", ANNOTATIONS, self._annotated,
                                   kernel=not self._booted(), skip_callers=RULED_CALLERS)
            self.watch.install()
        if self.boot_over not in MODULES.load_listeners:
            MODULES.load_listeners.append(self.boot_over)

    def boot_over(self, _module=None) -> None:
        """At a scan or a module load once the system runs: the calls in vmlinux are unhooked
        (every breakpoint slows the whole guest, see TaskNames)."""
        if self.watch is not None and system_running(SESSION.vmem(), SESSION.layout()):
            self.watch.drop_kernel()

    @staticmethod
    def _booted() -> bool:
        return target.paging_on() and system_running(SESSION.vmem(), SESSION.layout())

    def remove_hooks(self) -> None:
        self.tasks.remove()
        if self.boot_over in MODULES.load_listeners:
            MODULES.load_listeners.remove(self.boot_over)
        if self.watch is not None:
            self.watch.remove()
            self.watch = None

    def _annotated(self, call: Call) -> bool:
        self.tasks.note_current()
        kind = ANNOTATIONS[call.function]
        trace = None
        if kind == UPDATE_TRACE:        # the stack above a tail call's return address
            trace = stack_backtrace(call.returns_to, call.regs["rsp"] + 8 * call.tail)
        self.annotations.record(kind, call.regs["rdi"], call.regs["rsi"], trace)
        return False

    def track_module_caches(self, on: bool) -> None:
        """SLUB user tracking (allocation backtraces) for every cache a module creates from
        now on, decided from the host: kmem_cache_create() is called with SLAB_STORE_USER
        added to its flags, as slub_debug=U,NAME would for a NAME not known at boot. One stop
        per cache a module creates. Such a cache is never merged, so it keeps its name."""
        if on and self.cache_watch is None:
            self.cache_watch = CallWatch("module cache tracking", CACHE_CREATORS,
                                         self._cache_created, kernel=False)
            self.cache_watch.install()
        elif not on and self.cache_watch is not None:
            self.cache_watch.remove()
            self.cache_watch = None

    def _cache_created(self, call: Call) -> bool:
        self.tasks.note_current()
        flags = call.regs["rcx"]                 # slab_flags_t, both creators' 4th argument
        if not flags & SLAB_STORE_USER:
            target.set_raw({"rcx": flags | SLAB_STORE_USER})
        return False

    def annotation_note(self) -> list[str]:
        table = SESSION.symbolizer().kernel
        return [] if any(n in table.by_name for n in ANNOTATIONS) else [NO_ANNOTATIONS]

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
                 + R.reserved_roots(ctx, snap.memmap, [first_chunk_area(ctx)])
                 + R.kfree_rcu_roots(ctx))
        if self.stack_scan:
            roots += R.stack_roots(ctx, task_list)
        pages = L.PageStructs(snap.memmap, R.page_struct_rows(ctx, snap.memmap))
        result = L.scan(ctx, heap, roots, vcpu_registers(), pages)
        describe = Describer(ctx, heap, task_list, self.tasks.names, self.annotations)
        leaks = self._leaks(describe, result)
        seconds = time.perf_counter() - start
        outcome = ScanOutcome(snap, result, L.root_names(roots), leaks, seconds)
        outcome.notes += self.annotation_note()
        self.boot_over()
        if not any(tracks_enabled(c) for c in heap.caches):
            outcome.notes.append("no SLUB user tracking in this guest: boot it with slub_debug=U "
                                 "for allocation backtraces, pid and age of slab objects")
        outcome.heap_findings = [describe.heap_finding(e) for e in heap.errors]
        name_exited_tasks(ctx, leaks + [e for f in outcome.heap_findings for e in (f.alloc, f.free) if e])
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


def name_exited_tasks(ctx: GuestContext, records: list) -> None:
    """Fill `comm` of records (leaks, heap events) whose task was neither running nor seen at
    a stop, from the page allocator's records (page_owner=on)."""
    unnamed = {r.pid for r in records if r.pid is not None and r.comm is None}
    names = task_names(ctx, unnamed)
    for r in records:
        if r.comm is None and r.pid in names:
            r.comm = names[r.pid]


def jiffies_now(ctx: GuestContext) -> int:
    return ctx.vmem.u64(ctx.layout.sym("jiffies_64"))


class Describer:
    """Turns heap rows into Leak records: contents, allocation track, backtrace, task."""

    def __init__(self, ctx: GuestContext, heap: Heap, task_list: list[R.Task] | None = None,
                 exited: dict[int, str] | None = None, annotations: Annotations | None = None):
        self.ctx, self.heap, self.annotations = ctx, heap, annotations
        self.jiffies = jiffies_now(ctx)
        lay = ctx.layout
        tick_nsec = ctx.vmem.u64(lay.sym("tick_nsec")) if lay.has_sym("tick_nsec") else 0
        self.hz = round(1e9 / tick_nsec) if tick_nsec else 0     # tick_nsec = NSEC_PER_SEC / HZ
        live = R.tasks(ctx) if task_list is None else task_list
        self.comms = {**(exited or {}), **{pid: comm for _, pid, comm in live}}
        self._aliases: dict[int, list[str]] | None = None

    def aliases(self, cache: CacheInfo) -> list[str]:
        """Other names of CACHE (merged caches), read once per scan when a leak needs them."""
        if self._aliases is None:
            self._aliases = cache_aliases(self.ctx)
        return sorted(n for n in self._aliases.get(cache.address, []) if n != cache.name)

    def event(self, cache: CacheInfo, obj: int, which: int) -> HeapEvent | None:
        """One SLUB track (ALLOC or FREE) of OBJ as report fields; None when none."""
        track = read_track(self.ctx, cache, obj, which)
        if track is None:
            return None
        age = ((self.jiffies - track.when) & (1 << 64) - 1) / self.hz if self.hz else None
        return HeapEvent(track.pid, self.comms.get(track.pid), track.when, age,
                         [frame_for(pc) for pc in (track.stack or [track.addr])])

    def page_owner(self, addr: int) -> PageOwner | None:
        """page_owner's record of the first page of a large kmalloc or vmalloc area."""
        try:
            return page_owner(self.ctx, self.ctx.vmem.to_phys(addr) // PAGE_SIZE)
        except (PagingError, MemoryError_):
            return None

    def heap_finding(self, error: HeapError) -> HeapFinding:
        finding = HeapFinding(error.kind, error.what, error.cache, error.object)
        cache = next((c for c in self.heap.caches if c.name == error.cache), None)
        if cache is not None and error.object is not None:
            finding.alloc = self.event(cache, error.object, ALLOC)
            finding.free = self.event(cache, error.object, FREE)
        return finding

    def __call__(self, i: int, kind: str, owner: int | None) -> Leak:
        heap, ctx = self.heap, self.ctx
        start, size = int(heap.start[i]), int(heap.size[i])
        cache = heap.caches[heap.cache[i]] if heap.cache[i] >= 0 else None
        leak = Leak(start, size, kind, KIND_NAMES[int(heap.kind[i])], cache.name if cache else None,
                    ctx.vmem.read(start, min(32, size)), owner=owner)
        extra = heap.extra.get(i)
        if cache:
            leak.cache_aliases = self.aliases(cache)
        track = self.event(cache, start, ALLOC) if cache else None
        owner = None if cache else self.page_owner(start)
        if track:
            leak.pid, leak.comm, leak.jiffies, leak.age = track.pid, track.comm, track.jiffies, track.age
            leak.backtrace = track.backtrace
        elif owner:
            leak.pid, leak.comm = owner.pid, owner.comm
            leak.backtrace = [frame_for(pc) for pc in requested_from(owner.stack, ctx.symbol_name)]
        elif extra and extra.caller:
            leak.backtrace = [frame_for(extra.caller)]
        updated = self.annotations.trace_of(heap, i) if self.annotations else None
        if updated:
            leak.backtrace = [frame_for(pc) for pc in updated]
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
