"""Module scope on a fake SLUB guest: what an allocation helper's return gives the object
(its contract: zeroed, copied, a header before it), copies a helper makes before the object is
known, objects born inside the call, quarantine of freed objects, constructor caches."""
import pytest

from gdbext.core.allocsites import HELPERS, PendingCalls, string_length
from gdbext.core.codescan import call_target
from gdbext.core.lifetimes import LARGE, QUARANTINE
from gdbext.core.shadow import INITIALIZED, UNINITIALIZED

from .test_kmemcheck_engine import ALLOC_PC, MOV_EAX_RDI, MOV_RDI_RAX, REP_MOVSB, access, engine_for, slot
from .test_slub_walk import CACHE, PO, SLAB, FakeSlub

CALL_RSP = 0xFFFF_C900_0001_3100        # the module's stack pointer at its call instruction
INSIDE = CALL_RSP - 0x200               # the helper's, on the same 16 KiB task stack
ELSEWHERE = CALL_RSP - 0x4000           # the task stack below, same distance any fault has
SITE = 0xFFFF_FFFF_A000_1000
AREA = PO + 0x400000                    # memory not tracked while the helper runs


@pytest.fixture
def guest():
    g = FakeSlub()
    g.freelist(5, 10)
    return g


def enter(engine, name, **args):
    regs = dict(dict.fromkeys(("rax", "rdi", "rsi", "rdx", "rcx", "r8", "r9"), 0), rsp=CALL_RSP, **args)
    helper = HELPERS[name]
    copy_len = {"kmemdup": args.get("rsi", 0), "krealloc": 64}.get(name, 0)
    return engine.calls.enter(helper, SITE, regs, copy_len=copy_len, backtrace=[SITE + 5])


def test_call_target_and_string_length():
    code = bytes.fromhex("e8fb0f0000")                 # call .+0x1000
    assert call_target(code, 0x1000) == 0x2000 and call_target(b"\x90" * 5, 0x1000) is None
    memory = {0x0FFE: b"ab", 0x1000: b"cd\0"}

    def read(addr, n):
        for base, data in memory.items():
            if base <= addr < base + len(data):
                return data[addr - base:addr - base + n]
        return bytes(n)
    assert string_length(read, 0x0FFE, 100) == 4 and string_length(read, 0x0FFE, 3) == 3


def test_a_helper_is_found_by_the_stack_it_runs_on():
    calls = PendingCalls(16384)
    call = calls.enter(HELPERS["kmemdup"], SITE, {"rsp": CALL_RSP})
    assert calls.containing(INSIDE) is call
    assert calls.containing(CALL_RSP + 8) is None          # the caller itself, after return
    assert calls.containing(ELSEWHERE) is None             # another task
    assert calls.leave(CALL_RSP) is call and len(calls) == 0


def test_requested_sizes_and_zeroing_follow_the_contract():
    calls = PendingCalls()
    kzalloc = calls.enter(HELPERS["kmalloc_trace"], SITE, {"rsp": 1, "rsi": 0xDC0, "rdx": 40})
    assert kzalloc.zeroed and kzalloc.requested == 40
    nul = calls.enter(HELPERS["kmemdup_nul"], SITE, {"rsp": 2, "rdi": AREA, "rsi": 20, "rdx": 0xCC0},
                      copy_len=20)
    assert not nul.zeroed and nul.requested == 21
    assert nul.fill(AREA) == [(AREA, 20, INITIALIZED), (AREA + 20, 1, INITIALIZED)]
    assert calls.enter(HELPERS["vcalloc"], SITE, {"rsp": 3, "rdi": 3, "rsi": 100}).requested == 300
    assert calls.enter(HELPERS["vzalloc"], SITE, {"rsp": 4, "rdi": 8}).zeroed


def test_kmalloc_returned_on_a_page_not_hidden_before_is_uninitialized(guest):
    engine = engine_for(guest)
    call = enter(engine, "kmalloc_trace", rsi=0xCC0, rdx=64)
    engine.calls.leave(CALL_RSP)
    region = engine.region_of(slot(4))
    obj = engine.returned(call, slot(4), region)
    assert obj.scoped and engine.shadow.get(slot(4), 64) == bytes([UNINITIALIZED]) * 64
    assert engine.heap.origins[obj.origin].alloc_pcs == [SITE + 5]
    (f,) = access(engine, MOV_EAX_RDI, rdi=slot(4) + 8).findings
    assert f.kind == "uninitialized" and f.origin.alloc_pcs == [SITE + 5]


def test_kzalloc_zeroing_seen_inside_the_call_is_kept(guest):
    """On a page already hidden, the zeroing inside kzalloc faults like any access: the
    object is born in the call, and the return keeps what the helper wrote."""
    engine = engine_for(guest)
    access(engine, bytes.fromhex("48894720"), pc=ALLOC_PC, rdi=slot(5))     # handed out
    guest.freelist(10)
    call = enter(engine, "kmalloc_trace", rsi=0xDC0, rdx=64)
    access(engine, bytes.fromhex("f3aa"), rdi=slot(5), rcx=64, rax=0, rsp=INSIDE)   # rep stosb
    engine.calls.leave(CALL_RSP)
    obj = engine.returned(call, slot(5), engine.region_of(slot(5)))
    assert obj.scoped and engine.shadow.get(slot(5), 64) == bytes([INITIALIZED]) * 64


def test_kmemdup_into_memory_tracked_only_at_the_return_carries_the_source_state(guest):
    engine = engine_for(guest)
    src_call = enter(engine, "kmalloc_trace", rsi=0xCC0, rdx=64)
    engine.calls.leave(CALL_RSP)
    src = engine.returned(src_call, slot(4), engine.region_of(slot(4)))
    access(engine, MOV_RDI_RAX, rdi=slot(4), rax=1)                # first 8 bytes written
    call = enter(engine, "kmemdup", rdi=slot(4), rsi=64, rdx=0xCC0)
    out = access(engine, REP_MOVSB, rsi=slot(4), rdi=AREA, rcx=64, rsp=INSIDE)
    assert out.findings == [], "the copy into the object kmemdup returns is not a report"
    engine.calls.leave(CALL_RSP)
    region = engine.heap.track_area(LARGE, AREA, 4096, "large kmalloc")
    engine.returned(call, AREA, region)
    assert engine.shadow.get(AREA, 16) == bytes([INITIALIZED]) * 8 + bytes([UNINITIALIZED]) * 8
    (f,) = access(engine, MOV_EAX_RDI, rdi=AREA + 40).findings
    assert f.origin.object == slot(4) and f.origin.id == src.origin


def test_a_helper_copy_whose_destination_is_never_returned_is_reported(guest):
    engine = engine_for(guest)
    engine.shadow.set(slot(4), 64, UNINITIALIZED)
    enter(engine, "kmemdup", rdi=slot(3), rsi=64, rdx=0xCC0)      # copies from another object
    (f,) = access(engine, REP_MOVSB, rsi=slot(4), rdi=AREA, rcx=64, rsp=INSIDE).findings
    assert f.copy_to == AREA


def test_krealloc_returning_the_same_object_changes_nothing(guest):
    engine = engine_for(guest)
    engine.shadow.set(slot(4) + 16, 48, UNINITIALIZED)
    call = enter(engine, "krealloc", rdi=slot(4), rsi=60, rdx=0xCC0)
    engine.calls.leave(CALL_RSP)
    engine.returned(call, slot(4), engine.region_of(slot(4)))
    assert engine.shadow.get(slot(4) + 8, 16) == bytes([INITIALIZED]) * 8 + bytes([UNINITIALIZED]) * 8


def test_devm_kmalloc_header_is_initialized_the_data_is_not(guest):
    engine = engine_for(guest)
    call = enter(engine, "devm_kmalloc", rsi=24, rdx=0xCC0)
    engine.calls.leave(CALL_RSP)
    engine.returned(call, slot(4) + 40, engine.region_of(slot(4)))
    states = engine.shadow.get(slot(4), 64)
    assert states[:40] == bytes([INITIALIZED]) * 40 and states[40:] == bytes([UNINITIALIZED]) * 24


def test_objects_the_helper_allocates_for_itself_leave_the_scope(guest):
    """vmalloc allocates its own bookkeeping inside the call: born there, not returned."""
    engine = engine_for(guest, scoped=False)
    mine = enter(engine, "kmalloc_trace", rsi=0xCC0, rdx=64)       # pins the slab: module scope
    engine.calls.leave(CALL_RSP)
    engine.returned(mine, slot(4), engine.region_of(slot(4)))
    guest.freelist(6)
    call = enter(engine, "vmalloc", rdi=8192)
    access(engine, MOV_RDI_RAX, rdi=slot(10), rax=1, rsp=INSIDE)   # the helper's own object
    engine.calls.leave(CALL_RSP)
    engine.heap.settle_call(call.id, None)
    obj = engine.heap.objects[slot(10)]
    assert not obj.scoped and engine.shadow.get(slot(10) + 8, 8) == bytes([INITIALIZED]) * 8


def test_quarantine_ends_after_foreign_accesses(guest):
    """A region pinned only by a freed module object stays hidden for QUARANTINE accesses to
    other objects, then is released (a use after free right after the free still faults)."""
    engine = engine_for(guest, scoped=False)                       # module scope, not the cache
    call = enter(engine, "kmalloc_trace", rsi=0xCC0, rdx=64)
    engine.calls.leave(CALL_RSP)
    engine.returned(call, slot(4), engine.region_of(slot(4)))
    access(engine, bytes.fromhex("48894720"), pc=ALLOC_PC, rdi=slot(4))   # kfree
    guest.freelist(4, 5, 10)
    (uaf,) = access(engine, MOV_EAX_RDI, rdi=slot(4)).findings
    assert uaf.kind == "freed"
    released = []
    for _ in range(QUARANTINE + 1):
        released += access(engine, MOV_EAX_RDI, rdi=slot(20)).release
    assert released == [SLAB] and not engine.tracked_page(SLAB)


@pytest.fixture
def ctor_guest():
    g = FakeSlub()
    g.ctx.layout.offsets["kmem_cache.ctor"] = 0x50
    g.u64(CACHE + 0x50, 0xFFFF_FFFF_A000_2000)
    g.freelist(5, 10)
    return g


CTOR = 0xFFFF_FFFF_A000_2000


def test_constructor_writes_initialize_the_rest_stays_uninitialized(ctor_guest):
    """A new slab of a constructor cache, seen before the constructor runs: what the
    constructor writes is initialized in every lifetime, what it leaves is not, also after a
    user wrote it (or had it reported) in an earlier lifetime."""
    engine = engine_for(ctor_guest, fresh=True, ctor_ran=False)
    engine.function_at = lambda pc: CTOR if CTOR <= pc < CTOR + 0x40 else 0
    assert engine.shadow.get(slot(7), 64) == bytes([UNINITIALIZED]) * 64
    access(engine, MOV_RDI_RAX, pc=CTOR + 4, rdi=slot(7), rax=0xC0FFEE)   # the constructor
    assert not engine.heap.objects[slot(7)].alive, "construction starts no lifetime"
    for lifetime in range(2):
        call = enter(engine, "kmem_cache_alloc", rsi=0xCC0)
        engine.calls.leave(CALL_RSP)
        engine.returned(call, slot(7), engine.region_of(slot(7)))
        assert access(engine, MOV_EAX_RDI, rdi=slot(7)).findings == []
        (f,) = access(engine, MOV_EAX_RDI, rdi=slot(7) + 16).findings
        assert f.kind == "uninitialized" and f.origin is not None
        access(engine, MOV_RDI_RAX, rdi=slot(7) + 24, rax=1)            # the user writes
        access(engine, bytes.fromhex("48894720"), pc=ALLOC_PC, rdi=slot(7))  # kfree
