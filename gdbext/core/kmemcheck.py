"""Host-side kmemcheck: the decisions taken at each tracked access, on plain values.

The glue hides the pages of tracked slab objects; every guest access to them faults, and the
fault arrives here as the faulting context's registers and instruction bytes. The engine
completes the instruction (emulate.py), then checks and updates the byte shadow the way
arch/x86/mm/kmemcheck (Linux 2.6.31-4.14) did: reads of uninitialized bytes and any access to
freed or unallocated bytes are findings; writes initialize.

Object lifetimes come from the allocator's own behaviour instead of a stop per kmalloc/kfree:
SLUB touches an object's free pointer exactly when it frees the object or hands it out, and that
touch faults like any other access. So an allocator access to the free-pointer word marks the
object freed; the next access by anyone else finds it either still on a freelist (a use after
free) or allocated again (a new lifetime: uninitialized, or initialized for constructor caches).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable

from . import emulate
from .decode import DecodeError, decode
from .heap.context import PAGE_SIZE, GuestContext
from .heap.model import CacheInfo
from .heap.slub import FreelistError, SlabRef, free_indices
from .hidden import ThroughHidden
from .shadow import FREED, INITIALIZED, STATE_NAMES, UNALLOCATED, UNINITIALIZED, Shadow

# The page-fault path itself reads these (current->mm in exc_page_fault, the allocator's own
# cache structures): tracking them would fault inside the fault handler.
NEVER_TRACKED = frozenset({"task_struct", "kmem_cache", "kmem_cache_node"})
SLAB_TYPESAFE_BY_RCU = 0x00080000       # include/linux/slab.h (6.1): freed objects stay readable


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


@dataclass
class Origin:
    """An allocation whose uninitialized bytes may be read later, maybe after a copy."""
    id: int
    object: int
    size: int
    cache: str
    alloc_pcs: list[int] = field(default_factory=list)   # allocation backtrace (SLUB tracking)


@dataclass
class TrackedObject:
    start: int
    size: int
    cache: CacheInfo
    alive: bool
    origin: int = 0
    scoped: bool = True        # findings on it are reported (its cache or its allocator is tracked)


@dataclass
class ObjectRef:
    start: int
    size: int
    cache: str

    @property
    def offset_text(self) -> str:
        return f"{self.size}-byte object {self.start:#x} ({self.cache})"


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


@dataclass
class FaultOutcome:
    regs: dict[str, int] | None     # registers after the instruction; None: single-step it
    findings: list[Finding]
    turn_off: bool = False          # one-shot mode fired
    writes: list[tuple[int, bytes]] = field(default_factory=list)   # guest memory to write


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
    """Tracked slabs, object lifetimes, the shadow, and the per-fault decisions.

    CTX reads guest memory; MEMORY reaches hidden pages too; IS_ALLOCATOR(pc) says whether code
    at pc belongs to the slab allocator; KEEP(finding) is the glue's filter (suppressions,
    bitfield-ok), called only for findings."""

    def __init__(self, ctx: GuestContext, memory: ThroughHidden, options: Options,
                 is_allocator: Callable[[int], bool],
                 keep: Callable[[Finding], bool] = lambda f: True,
                 read_track: Callable[[CacheInfo, int], list[int]] = lambda c, a: [],
                 in_scope: Callable[[CacheInfo], bool] = lambda c: True):
        self.ctx = ctx
        self.memory = memory
        self.options = options
        self.is_allocator = is_allocator
        self.keep = keep
        self.read_track = read_track
        self.in_scope = in_scope
        self.shadow = Shadow(PAGE_SIZE)
        self.slabs: dict[int, tuple[SlabRef, CacheInfo]] = {}     # page -> its slab
        self.objects: dict[int, TrackedObject] = {}               # object start -> lifetime
        self.origins: dict[int, Origin] = {}
        self.reports: list[Finding] = []
        self.stats = Stats()
        self._allocator_pcs: dict[int, bool] = {}

    # -- tracking --------------------------------------------------------------------------
    def track_slab(self, slab: SlabRef, cache: CacheInfo, fresh: bool) -> list[int]:
        """Shadow a slab of a tracked cache; returns its pages (for the glue to hide). A FRESH
        slab (just made) holds no allocated object; an existing one keeps its objects' contents
        as initialized (their history is unknown) and its free objects as freed."""
        pages = list(range(slab.base, slab.base + cache.slab_bytes, PAGE_SIZE))
        self.shadow.untrack(slab.base, cache.slab_bytes)
        self.shadow.track(slab.base, cache.slab_bytes, UNALLOCATED)
        free = set() if fresh else self._free_or_empty(slab, cache)
        for index in range(slab.objects):
            start = slab.object_start(cache, index)
            alive = not fresh and index not in free
            state = INITIALIZED if alive else (UNALLOCATED if fresh else FREED)
            self.shadow.set(start, cache.object_size, state)
            self.objects[start] = TrackedObject(start, cache.object_size, cache, alive,
                                                scoped=self.in_scope(cache))
        for page in pages:
            self.slabs[page] = (slab, cache)
        return pages

    def allocated(self, start: int, zeroed: bool) -> bool:
        """An allocation seen at its call site (module scope): START begins a tracked lifetime,
        uninitialized unless the allocator zeroed it. False when START is not on a tracked page."""
        entry = self.slabs.get(start & ~(PAGE_SIZE - 1))
        if entry is None:
            return False
        slab, cache = entry
        index = slab.index(cache, start)
        if index is None or slab.object_start(cache, index) != start:
            return False
        origin = self._new_origin(start, cache)
        state = INITIALIZED if zeroed or cache.ctor else UNINITIALIZED
        self.shadow.set(start, cache.object_size, state, origin.id)
        self.objects[start] = TrackedObject(start, cache.object_size, cache, True, origin.id)
        return True

    def scoped_objects_on(self, page: int) -> bool:
        """Whether a live object of the scope (module allocations included) is on PAGE."""
        return any(o.alive and o.scoped for s, o in self.objects.items() if page <= s < page + PAGE_SIZE)

    def untrack_page(self, page: int) -> None:
        entry = self.slabs.pop(page, None)
        self.shadow.untrack(page, PAGE_SIZE)
        if entry:
            for start in [s for s in self.objects if page <= s < page + PAGE_SIZE]:
                del self.objects[start]

    def tracked_page(self, addr: int) -> bool:
        return (addr & ~(PAGE_SIZE - 1)) in self.slabs

    def _free_or_empty(self, slab: SlabRef, cache: CacheInfo) -> set[int]:
        try:
            return free_indices(self.ctx, cache, slab)
        except FreelistError:
            return set()

    # -- one fault -------------------------------------------------------------------------------
    def handle(self, regs: dict[str, int], code: bytes) -> FaultOutcome:
        """The faulting context REGS (pt_regs plus fs_base/gs_base) and the instruction bytes at
        its rip: complete the instruction and check its accesses."""
        self.stats.faults += 1
        pc = regs["rip"]
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
            findings = self.account(ops, None, regs, insn.text)
            return FaultOutcome(None, findings, self._one_shot_fired(findings))
        self.stats.emulated += 1
        findings = self.account(effect.ops, effect.copy, regs, effect.text)
        return FaultOutcome(effect.regs, findings, self._one_shot_fired(findings), staged.writes)

    def _one_shot_fired(self, findings: list[Finding]) -> bool:
        return self.options.one_shot and bool(self.reports) and bool(findings)

    def account(self, ops: list[emulate.MemOp], copy: tuple[int, int, int] | None,
                regs: dict[str, int], text: str) -> list[Finding]:
        """Check and update the shadow for the accesses of one instruction, in order."""
        pc = regs["rip"]
        if self._allocator(pc):
            self.stats.allocator += 1
            for op in ops:
                self._allocator_access(op.address, op.size)
            return []
        found: list[Finding] = []
        if copy is not None:
            found += self._copy(copy, ops, regs, text)
        else:
            for op in ops:
                if self.shadow.any_tracked(op.address, op.size):
                    self._sync_lifetimes(op.address, op.size)
                    finding = (self._write if op.write else self._read)(op.address, op.size, regs, text)
                    if finding:
                        found.append(finding)
        return self._file(found)

    def _allocator(self, pc: int) -> bool:
        known = self._allocator_pcs.get(pc)
        if known is None:
            known = self._allocator_pcs[pc] = bool(self.is_allocator(pc))
        return known

    def _allocator_access(self, addr: int, size: int) -> None:
        """SLUB reads or writes an object's free pointer only while freeing it or handing it
        out: either way its old contents are dead."""
        entry = self.slabs.get(addr & ~(PAGE_SIZE - 1))
        if entry is None:
            return
        slab, cache = entry
        index = slab.index(cache, addr)
        if index is None:
            return
        start = slab.object_start(cache, index)
        if addr == start + cache.offset:
            obj = self.objects.get(start)
            if obj is not None and obj.alive:
                obj.alive = False
                self.shadow.set(start, cache.object_size, FREED)

    def _sync_lifetimes(self, addr: int, size: int) -> None:
        """Bring every object touched by [addr, addr+size) up to date with the allocator."""
        end = addr + size
        while addr < end:
            entry = self.slabs.get(addr & ~(PAGE_SIZE - 1))
            step_end = min(end, (addr & ~(PAGE_SIZE - 1)) + PAGE_SIZE)
            if entry is not None:
                slab, cache = entry
                index = slab.index(cache, addr)
                if index is not None:
                    start = slab.object_start(cache, index)
                    self._sync_object(slab, cache, start, index)
                    step_end = min(end, start + cache.size)
            addr = max(step_end, addr + 1)

    def _sync_object(self, slab: SlabRef, cache: CacheInfo, start: int, index: int) -> None:
        obj = self.objects.get(start)
        if obj is not None and obj.alive:
            return
        if index in self._free_or_empty(slab, cache):
            if cache.flags & SLAB_TYPESAFE_BY_RCU:
                self.shadow.set(start, cache.object_size, INITIALIZED)
            return
        # Allocated since the allocator last touched it: a new lifetime. Objects of caches
        # outside the scope (pages shared with module-scope objects) are nobody's concern.
        scoped = self.in_scope(cache)
        origin = self._new_origin(start, cache) if scoped else None
        state = UNINITIALIZED if scoped and not cache.ctor else INITIALIZED
        self.shadow.set(start, cache.object_size, state, origin.id if origin else 0)
        self.objects[start] = TrackedObject(start, cache.object_size, cache, True,
                                            origin.id if origin else 0, scoped)

    def _new_origin(self, start: int, cache: CacheInfo) -> Origin:
        origin = Origin(len(self.origins) + 1, start, cache.object_size, cache.name,
                        self.read_track(cache, start))
        self.origins[origin.id] = origin
        return origin

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

    def _copy(self, copy: tuple[int, int, int], ops: list[emulate.MemOp], regs, text) -> list[Finding]:
        """movs: shadow and origins travel with the bytes. A copy that takes uninitialized bytes
        out of kmemcheck's view (to untracked memory: the stack, user space) is reported, with
        the source object, like the siginfo example of Documentation/kmemcheck.txt."""
        dst, src, size = copy
        element = string_element_size(text)
        found = []
        src_tracked = self.shadow.any_tracked(src, size)
        dst_tracked = self.shadow.any_tracked(dst, size)
        if src_tracked:
            self._sync_lifetimes(src, size)
        if dst_tracked:
            self._sync_lifetimes(dst, size)
            verdict = self.shadow.check(dst, size)
            if verdict.state in (FREED, UNALLOCATED):
                found.append(self._finding(verdict.state, "write", dst, element,
                                           verdict.first_bad, regs, text))
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

    def _finding(self, state: int, access: str, addr: int, size: int, first_bad: int,
                 regs, text) -> Finding:
        start, letters = self.shadow.window(first_bad, self.options.window_log2)
        window = bytes(self._read_guest(start, len(letters)))
        obj, origin, object_shadow = None, None, ""
        entry = self.slabs.get(first_bad & ~(PAGE_SIZE - 1))
        if entry is not None:
            slab, cache = entry
            index = slab.index(cache, first_bad)
            if index is not None:
                obj_start = slab.object_start(cache, index)
                obj = ObjectRef(obj_start, cache.object_size, cache.name)
                object_shadow = self.shadow.letters(obj_start, cache.object_size)
        origin_id = int(self.shadow.get_origins(first_bad, 1)[0])
        if origin_id:
            origin = self.origins.get(origin_id)
        return Finding(STATE_NAMES[state], access, addr, size, first_bad, regs["rip"], text,
                       dict(regs), start, window, letters, obj, origin,
                       object_shadow=object_shadow)

    def _read_guest(self, addr: int, size: int) -> bytes:
        try:
            return self.memory.read(addr, size)       # the bytes as they were before the access
        except Exception:          # a window reaching an unmapped page: show zeros
            return bytes(size)

    def _scoped(self, finding: Finding) -> bool:
        if finding.object is not None:
            obj = self.objects.get(finding.object.start)
            return obj is None or obj.scoped
        entry = self.slabs.get(finding.first_bad & ~(PAGE_SIZE - 1))
        return entry is None or self.in_scope(entry[1])

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
        return sum(1 for o in self.objects.values() if o.alive)

    def fast_fraction(self) -> float:
        return self.stats.emulated / self.stats.faults if self.stats.faults else 0.0

    def reset(self) -> None:
        self.shadow.clear()
        self.slabs.clear()
        self.objects.clear()
        self._allocator_pcs.clear()
