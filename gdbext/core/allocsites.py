"""A module's calls to the allocation helpers, as kmemcheck's module scope sees them.

Under module scope kmemgdb stops at each call instruction in the module's code that calls an
allocation helper (the call reads the arguments) and at the instruction after it (the return
gives the object). Between the two the helper runs on the same stack: an access it makes to
tracked memory belongs to the pending call. What a helper puts into the object follows from
its contract, not from watching it: kzalloc zeroes, kmemdup copies LEN bytes from SRC,
kstrndup copies and adds a NUL, devm_kmalloc returns a pointer past a devres header it wrote.
A copy the helper makes from a tracked object into memory not yet tracked (the new object,
before kmemgdb knows it) is kept aside here and applied to the object at the return.

Entry points and argument registers are the 6.1 x86-64 ones (System V: rdi, rsi, rdx, rcx,
r8, r9); inline wrappers (kzalloc, kcalloc, kmalloc_array, kvzalloc, kmem_cache_zalloc,
devm_kzalloc) compile to these.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .shadow import FREED, INITIALIZED, UNALLOCATED, UNINITIALIZED

GFP_ZERO = 0x100                     # ___GFP_ZERO (include/linux/gfp_types.h, 6.1)
MEMDUP, MEMDUP_NUL, STRDUP, STRNDUP, REALLOC = "memdup", "memdup_nul", "strdup", "strndup", "realloc"
STRING_LIMIT = 1 << 20               # bytes a kstrdup source is searched for its NUL


@dataclass(frozen=True)
class Helper:
    """One allocation entry point: which registers hold what, and what it puts in the object."""
    name: str
    gfp: str | None = None           # gfp_t argument
    size: str | None = None          # requested size (elements with COUNT)
    count: str | None = None         # element count multiplied with SIZE (vmalloc_array)
    cache: str | None = None         # struct kmem_cache * argument
    src: str | None = None           # what a copying helper copies from
    limit: str | None = None         # kstrndup's max
    copy: str = ""                   # how it fills the object: MEMDUP ... REALLOC
    zeroed: bool = False             # zeroes whatever the flags (vzalloc, vcalloc)
    interior: bool = False           # returns a pointer past a header it wrote (devm_*)
    may_return_src: bool = False     # kstrdup_const returns a .rodata string itself


_HELPERS = (
    Helper("kmem_cache_alloc", gfp="rsi", cache="rdi"),
    Helper("kmem_cache_alloc_lru", gfp="rdx", cache="rdi"),
    Helper("kmem_cache_alloc_node", gfp="rsi", cache="rdi"),
    Helper("kmalloc_trace", gfp="rsi", size="rdx", cache="rdi"),        # kmalloc(CONSTANT)
    Helper("kmalloc_node_trace", gfp="rsi", size="rcx", cache="rdi"),
    Helper("__kmalloc", gfp="rsi", size="rdi"),
    Helper("__kmalloc_node", gfp="rsi", size="rdi"),
    Helper("__kmalloc_node_track_caller", gfp="rsi", size="rdi"),
    Helper("kmalloc_large", gfp="rsi", size="rdi"),
    Helper("kmalloc_large_node", gfp="rsi", size="rdi"),
    Helper("kvmalloc_node", gfp="rsi", size="rdi"),
    Helper("kmemdup", gfp="rdx", size="rsi", src="rdi", copy=MEMDUP),
    Helper("kmemdup_nul", gfp="rdx", size="rsi", src="rdi", copy=MEMDUP_NUL),
    Helper("kstrdup", gfp="rsi", src="rdi", copy=STRDUP),
    Helper("kstrdup_const", gfp="rsi", src="rdi", copy=STRDUP, may_return_src=True),
    Helper("kstrndup", gfp="rdx", src="rdi", limit="rsi", copy=STRNDUP),
    Helper("krealloc", gfp="rdx", size="rsi", src="rdi", copy=REALLOC),
    Helper("vmalloc", size="rdi"),
    Helper("vmalloc_node", size="rdi"),
    Helper("vmalloc_32", size="rdi"),
    Helper("__vmalloc", gfp="rsi", size="rdi"),
    Helper("vzalloc", size="rdi", zeroed=True),
    Helper("vzalloc_node", size="rdi", zeroed=True),
    Helper("vmalloc_user", size="rdi", zeroed=True),
    Helper("vmalloc_array", count="rdi", size="rsi"),
    Helper("__vmalloc_array", count="rdi", size="rsi", gfp="rdx"),
    Helper("vcalloc", count="rdi", size="rsi", zeroed=True),
    Helper("devm_kmalloc", gfp="rdx", size="rsi", interior=True),
    Helper("devm_kmemdup", gfp="rcx", size="rdx", src="rsi", copy=MEMDUP, interior=True),
    Helper("devm_kstrdup", gfp="rdx", src="rsi", copy=STRDUP, interior=True),
)
HELPERS = {h.name: h for h in _HELPERS}

# kmem_cache_create(name, size, align, flags, ctor) and kmem_cache_create_usercopy(name, size,
# align, flags, useroffset, usersize, ctor): the name and constructor a module gives its cache.
# STACK: the 7th argument is at [rsp] at the call instruction.
CACHE_CREATORS = {"kmem_cache_create": "r8", "kmem_cache_create_usercopy": "stack"}


def string_length(read: Callable[[int, int], bytes], addr: int, limit: int) -> int:
    """strnlen(addr, limit) over guest memory READ(addr, size), a page at a time."""
    n = 0
    while n < limit:
        chunk = read(addr + n, min(limit - n, 4096 - ((addr + n) & 4095)))
        nul = chunk.find(b"\0")
        if nul >= 0:
            return n + nul
        n += len(chunk)
    return limit


@dataclass
class Stash:
    """A copy the helper made into memory kmemgdb did not track yet: states and origins of
    the bytes, to give the object if it turns out to be the destination."""
    dst: int
    states: bytes
    origins: object                  # numpy uint32 array


@dataclass
class PendingCall:
    """A module's allocation call between its call instruction and its return."""
    id: int
    helper: Helper
    site: int                        # address of the call instruction
    rsp: int                         # stack pointer at the call instruction
    args: dict[str, int]
    copy_len: int = 0                # bytes a copying helper copies from args[src]
    backtrace: list[int] = field(default_factory=list)   # return addresses, innermost first
    name: str = ""                   # the cache's name as the module created it
    stash: list[Stash] = field(default_factory=list)

    @property
    def zeroed(self) -> bool:
        h = self.helper
        return h.zeroed or (h.gfp is not None and bool(self.args.get(h.gfp, 0) & GFP_ZERO))

    @property
    def requested(self) -> int | None:
        """Bytes asked for, when the arguments say (None: the cache's object size)."""
        h = self.helper
        if h.copy == STRDUP:
            return self.copy_len
        if h.copy == STRNDUP:
            return self.copy_len + 1
        if h.size is None:
            return None
        size = self.args[h.size]
        if h.count is not None:
            size *= self.args[h.count]
        return size + 1 if h.copy == MEMDUP_NUL else size

    @property
    def source(self) -> tuple[int, int] | None:
        """[start, length) the helper copies from."""
        if not self.helper.copy or not self.copy_len:
            return None
        return self.args[self.helper.src], self.copy_len

    def copies_from(self, src: int) -> bool:
        source = self.source
        return source is not None and source[0] <= src < source[0] + source[1]

    def fill(self, p: int) -> list[tuple[int, int, int]]:
        """(start, size, state) ranges the helper's contract puts at P, after the base state:
        the copied bytes initialized (stashed states go on top), a terminating NUL."""
        if not self.helper.copy:
            return []
        length = self.copy_len
        if self.helper.copy == REALLOC and self.requested is not None:
            length = min(length, self.requested)
        out = [(p, length, INITIALIZED)] if length else []
        if self.helper.copy in (MEMDUP_NUL, STRNDUP):
            out.append((p + length, 1, INITIALIZED))
        return out


def carried_states(states: bytes) -> bytes:
    """A helper's copy carries initialized and uninitialized bytes; the slack it reads past
    an object (krealloc copies ksize() bytes) reads as uninitialized in the new object."""
    return bytes(UNINITIALIZED if s in (UNALLOCATED, FREED) else s for s in states)


class PendingCalls:
    """Allocation calls in progress, found again by stack: THREAD_SIZE-aligned task stacks
    tell which call an access inside a helper belongs to."""

    def __init__(self, thread_size: int = 16384):
        self.thread_size = thread_size
        self.calls: dict[int, PendingCall] = {}       # rsp at the call -> call
        self.next_id = 1

    def enter(self, helper: Helper, site: int, regs: dict[str, int], **facts) -> PendingCall:
        rsp = regs["rsp"]
        call = PendingCall(self.next_id, helper, site, rsp, dict(regs), **facts)
        self.next_id += 1
        self.calls[rsp] = call
        return call

    def leave(self, rsp: int) -> PendingCall | None:
        return self.calls.pop(rsp, None)

    def containing(self, rsp: int) -> PendingCall | None:
        """The innermost pending call whose helper is running with stack pointer RSP."""
        best = None
        for call in self.calls.values():
            if rsp < call.rsp and rsp // self.thread_size == call.rsp // self.thread_size:
                if best is None or call.rsp < best.rsp:
                    best = call
        return best

    def clear(self) -> None:
        self.calls.clear()

    def __len__(self) -> int:
        return len(self.calls)


@dataclass
class FailurePlan:
    """Make the NTH allocation call (1-based, counted over every helper in HELPERS) that code
    of MODULE makes fail, as if the allocator had returned NULL: error paths on demand."""
    module: str
    nth: int
    calls: int = 0
    injected: dict | None = None      # the call that was made to fail

    def count(self) -> bool:
        """One more allocation call by the module: True when it is the one to fail."""
        self.calls += 1
        return self.calls == self.nth

    def to_json(self) -> dict:
        return {"module": self.module, "nth": self.nth, "calls": self.calls,
                "injected": self.injected}
