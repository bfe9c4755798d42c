"""Host-side kmemcheck: the decisions taken at each tracked access, on plain values.

The glue hides the pages of tracked objects; every guest access to them faults, and the fault
arrives here as the faulting context's registers and instruction bytes. The engine completes
the instruction (emulate.py), then checks and updates the byte shadow the way
arch/x86/mm/kmemcheck (Linux 2.6.31-4.14) did: reads of uninitialized bytes and any access to
freed or unallocated bytes are findings; writes initialize. What is tracked and how objects
live and die is lifetimes.py; a module's pending allocation calls are allocsites.py.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable

from . import emulate
from .allocsites import REALLOC, PendingCall, PendingCalls, Stash, carried_states
from .decode import DecodeError, decode
from .heap.context import PAGE_SIZE, GuestContext
from .heap.model import CacheInfo
from .heap.slub import SlabRef
from .hidden import ThroughHidden
from .lifetimes import SLAB, Lifetimes, Origin, Region, TrackedObject
from .shadow import FREED, INITIALIZED, STATE_NAMES, UNALLOCATED, UNINITIALIZED, Shadow

# The page-fault path itself reads these (current->mm in exc_page_fault, the allocator's own
# cache structures): tracking them would fault inside the fault handler.
NEVER_TRACKED = frozenset({"task_struct", "kmem_cache", "kmem_cache_node"})


ELEMENT_SIZES = {"b": 1, "w": 2, "d": 4, "q": 8}


def string_element_size(text: str) -> int:
    """Bytes moved per iteration by a string instruction ("rep movsq ..." -> 8)."""
    for word in text.split():
        if word.startswith(("movs", "stos", "lods", "cmps", "scas")) and len(word) == 5:
            return ELEMENT_SIZES.get(word[-1], 1)
    return 1


class KmemcheckError(Exception):
    """A kmemcheck request the guest cannot satisfy (one line, says what to do)."""


@dataclass
class Scope:
    """What is tracked: `track all | cache NAME | module NAME`, minus `notrack cache NAME`."""
    all: bool = False
    caches: set[str] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)
    notrack: set[str] = field(default_factory=set)

    def tracks_cache(self, name: str) -> bool:
        if name in self.notrack or name in NEVER_TRACKED:
            return False
        return self.all or any(fnmatch.fnmatchcase(name, pattern) for pattern in self.caches)

    @property
    def empty(self) -> bool:
        return not (self.all or self.caches or self.modules)

    def describe(self) -> str:
        parts = ["all caches"] if self.all else []
        parts += [f"cache {c}" for c in sorted(self.caches)] + [f"module {m}" for m in sorted(self.modules)]
        text = ", ".join(parts) or "nothing"
        if self.notrack:
            text += " (not: " + ", ".join(f"cache {c}" for c in sorted(self.notrack)) + ")"
        return text


@dataclass
class Options:
    partial_ok: bool = True        # a read is fine when any of its bytes is initialized
    bitfield_ok: bool = True       # uninitialized bits of bitfield storage are not reported
    report_limit: int = 64         # the kernel's error queue size
    window_log2: int = 5           # bytes of shadow shown around the address: 2**window_log2
    one_shot: bool = False         # `kmemcheck 2`: turn off after the first report


    verify: bool = False           # also run host-completed instructions natively and compare


@dataclass
class ObjectRef:
    start: int
    size: int
    cache: str                     # the cache's name as its creator gave it; or vmalloc, ...
    kind: str = SLAB
    merged_into: str | None = None  # the cache SLUB merged it into, when not its own

    @property
    def source(self) -> str:
        if self.kind != SLAB:
            return "vmalloc area" if self.kind == "vmalloc" else "large kmalloc (pages)"
        merged = f" (merged into {self.merged_into})" if self.merged_into else ""
        return f"cache {self.cache}{merged}"


@dataclass
class Finding:
    """One report, as data: what was accessed, how, and what the shadow said."""
    kind: str                  # uninitialized | freed | unallocated
    access: str                # read | write
    address: int               # address of the access
    size: int                  # bytes of one access (an element of a string instruction)
    first_bad: int             # first byte in the reported state
    pc: int
    instruction: str
    regs: dict[str, int]
    window_start: int
    window_bytes: bytes
    window_shadow: str
    object: ObjectRef | None = None
    origin: Origin | None = None
    copy_to: int | None = None          # a copy to untracked memory: where the bytes went
    copy_size: int = 0
    object_shadow: str = ""             # shadow letters of the whole object, at report time
    # Filled in by the glue (DWARF, symbols): field, frames, source.
    details: dict = field(default_factory=dict)

    @property
    def title(self) -> str:
        what = "read from" if self.access == "read" else "write to"
        return f"Caught {self.size * 8}-bit {what} {self.kind} memory ({self.address:#018x})"


@dataclass
class Stats:
    faults: int = 0            # tracked faults handled
    emulated: int = 0          # completed on the host in the fault's own stop
    stepped: int = 0           # completed by showing the page and single-stepping
    allocator: int = 0         # SLUB's own accesses to object metadata
    findings: int = 0
    lost: int = 0              # findings beyond the report limit
    suppressed: int = 0
    verified: int = 0          # host results compared with the guest's own (verify mode)
    mismatches: int = 0        # ... that differed: internal errors
    released: int = 0          # regions shown again once nothing of the scope pinned them


@dataclass
class FaultOutcome:
    regs: dict[str, int] | None     # registers after the instruction; None: single-step it
    findings: list[Finding]
    turn_off: bool = False          # one-shot mode fired
    writes: list[tuple[int, bytes]] = field(default_factory=list)   # guest memory to write
    release: list[int] = field(default_factory=list)   # pages to show once it completed
    touched: list[int] = field(default_factory=list)   # tracked pages the instruction accesses
    text: str = ""


class _StagedMemory:
    """What the emulator sees: guest memory, with its writes held back for the glue to apply
    after the decision (a Ctrl-C in gdb must never leave an instruction half done).

    The exception frame (struct pt_regs) lies just below the interrupted stack pointer, so an
    instruction that pushes (call [mem], push [mem]) cannot be completed by editing pt_regs: it
    is refused, and single-stepped by the guest instead."""
    DEPTH = 4096

    def __init__(self, memory, rsp: int):
        self.memory = memory
        self.rsp = rsp
        self.writes: list[tuple[int, bytes]] = []

    def read(self, vaddr: int, size: int) -> bytes:
        data = self.memory.read(vaddr, size)
        for where, written in self.writes:
            lo, hi = max(vaddr, where), min(vaddr + size, where + len(written))
            if lo < hi:
                data = data[:lo - vaddr] + written[lo - where:hi - where] + data[hi - vaddr:]
        return data

    def write(self, vaddr: int, data: bytes) -> None:
        if self.rsp - self.DEPTH < vaddr + len(data) and vaddr < self.rsp:
            raise emulate.Unsupported("writes below the interrupted stack pointer")
        self.writes.append((vaddr, bytes(data)))


class Engine:
    """The shadow, what is tracked (heap), the pending allocation calls of module scope
    (calls), and the per-fault decisions.

    CTX reads guest memory; MEMORY reaches hidden pages too; IS_ALLOCATOR(pc) says whether code
    at pc belongs to the slab allocator; KEEP(finding) is the glue's filter (suppressions,
    bitfield-ok), called only for findings; THREAD_SIZE tells task stacks apart;
    FUNCTION_AT(pc) is the start of the function holding pc (0 unknown), which tells a cache
    constructor's writes from the object's use."""

    def __init__(self, ctx: GuestContext, memory: ThroughHidden, options: Options,
                 is_allocator: Callable[[int], bool],
                 keep: Callable[[Finding], bool] = lambda f: True,
                 read_track: Callable[[CacheInfo, int], list[int]] = lambda c, a: [],
                 in_scope: Callable[[CacheInfo], bool] = lambda c: True,
                 thread_size: int = 16384,
                 function_at: Callable[[int], int] = lambda pc: 0):
        self.ctx = ctx
        self.memory = memory
        self.options = options
        self.is_allocator = is_allocator
        self.keep = keep
        self.shadow = Shadow(PAGE_SIZE)
        self.heap = Lifetimes(ctx, self.shadow, in_scope, read_track)
        self.calls = PendingCalls(thread_size)
        self.function_at = function_at
        self.reports: list[Finding] = []
        self.stats = Stats()
        self._allocator_pcs: dict[int, bool] = {}
        self._functions: dict[int, int] = {}

    # -- tracking --------------------------------------------------------------------------
    def track_slab(self, slab: SlabRef, cache: CacheInfo, fresh: bool,
                   ctor_ran: bool = True) -> Region:
        return self.heap.track_slab(slab, cache, fresh, ctor_ran)

    def tracked_page(self, addr: int) -> bool:
        return (addr & ~(PAGE_SIZE - 1)) in self.heap.regions

    def region_of(self, addr: int) -> Region | None:
        return self.heap.region_of(addr)

    def release(self, region: Region) -> list[int]:
        """Forget REGION; returns its pages (for the glue to show)."""
        self.heap.release(region)
        return list(region.pages)

    def forget_code(self) -> None:
        """Code moved (a module loaded or unloaded): what was learnt per code address goes."""
        self._allocator_pcs.clear()
        self._functions.clear()

    # -- module scope: allocation calls ---------------------------------------------------------
    def returned(self, call: PendingCall, p: int, region: Region) -> TrackedObject | None:
        """CALL returned P, which lies in REGION (tracked by now): the object's lifetime, with
        the bytes its helper's contract put there."""
        if (call.helper.copy == REALLOC or call.helper.may_return_src) \
                and p == call.args[call.helper.src]:
            self.heap.settle_call(call.id, None)
            return self.heap.object_at(p)[0]           # the same object: nothing new
        slot = region.slot(p)
        if slot is None:
            self.heap.settle_call(call.id, None)
            return None
        start, size = slot
        obj = self.heap.objects.get(start)
        if obj is not None and obj.alive and obj.call == call.id:
            # Born during the call, on a page already hidden: its shadow followed every
            # write the helper made (zeroing, copies).
            self.heap.adopt(obj, call.name, call.backtrace)
        else:
            obj = self._begin_returned(call, p, region, start, size)
        self.heap.settle_call(call.id, obj)
        return obj

    def _begin_returned(self, call: PendingCall, p: int, region: Region, start: int,
                        size: int) -> TrackedObject:
        ctor = region.cache is not None and region.cache.ctor and not call.zeroed
        state = None if ctor else INITIALIZED if call.zeroed else UNINITIALIZED
        if region.kind != SLAB and call.requested is not None:
            size = call.requested
        obj = self.heap.begin(region, start, size, state, True, name=call.name)
        origin = self.heap.origins[obj.origin]
        if call.backtrace:
            origin.alloc_pcs = call.backtrace
        if call.helper.interior and p > start and not call.zeroed:
            self.shadow.set(start, p - start, INITIALIZED, obj.origin)
        for where, n, st in call.fill(p):
            self.shadow.set(where, n, st, obj.origin)
        for stash in call.stash:
            if region.slot(stash.dst) == region.slot(start):
                self.shadow.put(stash.dst, stash.states, stash.origins)
        return obj

    # -- one fault -------------------------------------------------------------------------------
    def handle(self, regs: dict[str, int], code: bytes) -> FaultOutcome:
        """The faulting context REGS (pt_regs plus fs_base/gs_base) and the instruction bytes at
        its rip: complete the instruction and check its accesses."""
        self.stats.faults += 1
        pc = regs["rip"]
        call = self.calls.containing(regs["rsp"])
        staged = _StagedMemory(self.memory, regs["rsp"])
        try:
            effect = emulate.emulate(code, regs, staged)
        except emulate.Unsupported:
            try:
                insn = decode(code, pc, regs)
            except DecodeError as exc:
                raise KmemcheckError(f"cannot complete the access at {pc:#x}: {exc}") from None
            self.stats.stepped += 1
            ops = [emulate.MemOp(a.address, a.size, False) for a in insn.accesses if a.read]
            ops += [emulate.MemOp(a.address, a.size, True) for a in insn.accesses if a.write]
            findings = self.account(ops, None, regs, insn.text, call)
            return self._outcome(None, findings, [], ops, insn.text)
        self.stats.emulated += 1
        findings = self.account(effect.ops, effect.copy, regs, effect.text, call)
        return self._outcome(effect.regs, findings, staged.writes, effect.ops, effect.text)

    def _outcome(self, regs, findings, writes, ops, text) -> FaultOutcome:
        regions = self.heap.regions
        touched: list[int] = []
        for op in ops:
            for page in range(op.address & ~(PAGE_SIZE - 1), op.address + op.size, PAGE_SIZE):
                if page in regions and page not in touched:
                    touched.append(page)
        release = []
        for page in touched:
            region = regions.get(page)
            if region is not None and not region.pinned and not self.heap.is_pinned(region):
                release += self.release(region)
                self.stats.released += 1
        turn_off = self.options.one_shot and bool(self.reports) and bool(findings)
        return FaultOutcome(regs, findings, turn_off, writes, release, touched, text)

    def lost_access(self, regs: dict[str, int], code: bytes, region: Region) -> list[Finding]:
        """The guest took back REGION (freed the pages, unmapped the area) while it was hidden,
        and the code at REGS accesses it: a use after free, reported before the kernel handles
        the fault as it would have without kmemcheck. The caller forgets REGION."""
        try:
            insn = decode(code, regs["rip"], regs)
        except DecodeError:
            insn = None
        found = []
        for a in insn.accesses if insn else ():
            if region.start <= a.address < region.start + region.size:
                found.append(self._finding(FREED, "write" if a.write else "read", a.address,
                                           a.size, a.address, regs, insn.text))
        return self._file(found)

    def account(self, ops: list[emulate.MemOp], copy: tuple[int, int, int] | None,
                regs: dict[str, int], text: str, call: PendingCall | None = None) -> list[Finding]:
        """Check and update the shadow for the accesses of one instruction, in order."""
        pc = regs["rip"]
        if self._allocator(pc):
            self.stats.allocator += 1
            for op in ops:
                self.heap.allocator_access(op.address)
            return []
        found: list[Finding] = []
        call_id = call.id if call else 0
        function = self._function(pc)
        if copy is not None:
            found += self._copy(copy, regs, text, call, function)
        else:
            for op in ops:
                if self.shadow.any_tracked(op.address, op.size):
                    self.heap.sync(op.address, op.size, call_id, function)
                    finding = (self._write if op.write else self._read)(op.address, op.size, regs, text)
                    if finding:
                        found.append(finding)
        self._note_foreign(ops)
        return self._file(found)

    def _function(self, pc: int) -> int:
        known = self._functions.get(pc)
        if known is None:
            known = self._functions[pc] = self.function_at(pc) or 0
        return known

    def _allocator(self, pc: int) -> bool:
        known = self._allocator_pcs.get(pc)
        if known is None:
            known = self._allocator_pcs[pc] = bool(self.is_allocator(pc))
        return known

    def _read(self, addr: int, size: int, regs, text) -> Finding | None:
        verdict = self.shadow.check(addr, size, self.options.partial_ok)
        if verdict.ok:
            return None
        finding = self._finding(verdict.state, "read", addr, size, verdict.first_bad, regs, text)
        if verdict.state == UNINITIALIZED:
            # As kmemcheck did: do not report the same bytes again.
            self.shadow.set(addr, size, INITIALIZED)
        return finding

    def _write(self, addr: int, size: int, regs, text) -> Finding | None:
        verdict = self.shadow.check(addr, size)
        bad = verdict.state in (FREED, UNALLOCATED)
        finding = (self._finding(verdict.state, "write", addr, size, verdict.first_bad, regs, text)
                   if bad else None)
        if not bad:
            self.shadow.set(addr, size, INITIALIZED)
        return finding

    def _copy(self, copy: tuple[int, int, int], regs, text, call: PendingCall | None,
              function: int = 0) -> list[Finding]:
        """movs: shadow and origins travel with the bytes. A copy that takes uninitialized bytes
        out of kmemcheck's view (to untracked memory: the stack, user space) is reported, with
        the source object, like the siginfo example of Documentation/kmemcheck.txt; unless an
        allocation helper makes it into the object it is about to return (kmemdup): then the
        states wait for the return, where the object becomes known."""
        dst, src, size = copy
        element = string_element_size(text)
        found = []
        call_id = call.id if call else 0
        src_tracked = self.shadow.any_tracked(src, size)
        dst_tracked = self.shadow.any_tracked(dst, size)
        if src_tracked:
            self.heap.sync(src, size, call_id, function)
        if dst_tracked:
            self.heap.sync(dst, size, call_id, function)
            verdict = self.shadow.check(dst, size)
            if verdict.state in (FREED, UNALLOCATED):
                found.append(self._finding(verdict.state, "write", dst, element,
                                           verdict.first_bad, regs, text))
        if src_tracked and call is not None and call.copies_from(src):
            start, length = call.source
            verdict = self.shadow.check(src, min(size, start + length - src))
            if verdict.state == FREED:
                found.append(self._finding(FREED, "read", src, element, verdict.first_bad, regs,
                                           text))
            states = carried_states(self.shadow.get(src, size))
            origins = self.shadow.get_origins(src, size)
            if dst_tracked:
                self.shadow.put(dst, states, origins)
            else:
                call.stash.append(Stash(dst, states, origins))
            return found
        if src_tracked:
            verdict = self.shadow.check(src, size)
            if verdict.state in (FREED, UNALLOCATED) or (verdict.state == UNINITIALIZED
                                                          and not dst_tracked):
                finding = self._finding(verdict.state, "read", src, element, verdict.first_bad,
                                        regs, text)
                if not dst_tracked:
                    finding.copy_to, finding.copy_size = dst, size
                found.append(finding)
        if dst_tracked:
            self.shadow.copy(dst, src, size)
        return found

    def object_ref(self, addr: int) -> ObjectRef | None:
        obj, region = self.heap.object_at(addr)
        if region is None:
            return None
        slot = region.slot(addr)
        if slot is None:
            return None
        size = obj.size if obj is not None else slot[1]
        name = (obj.name if obj is not None else "") or region.label
        merged = region.label if region.kind == SLAB and name != region.label else None
        return ObjectRef(slot[0], size, name, region.kind, merged)

    def _finding(self, state: int, access: str, addr: int, size: int, first_bad: int,
                 regs, text) -> Finding:
        start, letters = self.shadow.window(first_bad, self.options.window_log2)
        window = bytes(self._read_guest(start, len(letters)))
        obj = self.object_ref(first_bad)
        object_shadow = self.shadow.letters(obj.start, obj.size) if obj else ""
        origin = None
        origin_id = int(self.shadow.get_origins(first_bad, 1)[0])
        if origin_id:
            origin = self.heap.origins.get(origin_id)
        return Finding(STATE_NAMES[state], access, addr, size, first_bad, regs["rip"], text,
                       dict(regs), start, window, letters, obj, origin,
                       object_shadow=object_shadow)

    def _read_guest(self, addr: int, size: int) -> bytes:
        try:
            return self.memory.read(addr, size)       # the bytes as they were before the access
        except Exception:          # a window reaching an unmapped page: show zeros
            return bytes(size)

    def _note_foreign(self, ops) -> None:
        """Accesses to objects out of the scope on regions module scope pinned: the
        quarantine of freed objects there runs down."""
        for op in ops:
            region = self.heap.region_of(op.address)
            if region is None or region.pinned:
                continue
            obj = self.heap.object_at(op.address)[0]
            if obj is None or not obj.scoped:
                region.foreign += 1

    def _scoped(self, finding: Finding) -> bool:
        obj, region = self.heap.object_at(finding.first_bad)
        if obj is not None:
            return obj.scoped
        return region is None or region.pinned

    def _file(self, found: list[Finding]) -> list[Finding]:
        kept = []
        for finding in found:
            if not self._scoped(finding):
                continue
            if not self.keep(finding):
                self.stats.suppressed += 1
                continue
            self.stats.findings += 1
            if len(self.reports) >= self.options.report_limit:
                self.stats.lost += 1
                continue
            self.reports.append(finding)
            kept.append(finding)
            if self.options.one_shot:
                break
        return kept

    # -- inspection --------------------------------------------------------------------------------
    def tracked_objects(self) -> int:
        return self.heap.live_objects()

    def fast_fraction(self) -> float:
        return self.stats.emulated / self.stats.faults if self.stats.faults else 0.0
