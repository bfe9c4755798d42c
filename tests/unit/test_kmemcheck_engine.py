"""The kmemcheck engine on a fake SLUB guest: lifetimes inferred from the allocator's free-pointer
accesses, shadow checks and updates, copies with origins, report limits, one-shot."""
import pytest

from gdbext.core.hidden import HiddenPages, ThroughHidden
from gdbext.core.heap.slub import read_caches, slab_at
from gdbext.core.kmemcheck import Engine, Options, Scope
from gdbext.core.shadow import FREED, INITIALIZED, UNINITIALIZED

from .test_slub_walk import PO, SLAB, FakeSlub

ALLOC_PC = 0xFFFF_FFFF_8111_0000       # "SLUB" code
USER_PC = 0xFFFF_FFFF_A000_0000        # module code
REGS = {r: 0 for r in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10",
                       "r11", "r12", "r13", "r14", "r15", "fs_base", "gs_base")}
MOV_EAX_RDI = bytes.fromhex("8b07")            # mov eax, [rdi]
MOV_RDI_RAX = bytes.fromhex("488907")          # mov [rdi], rax
MOV_RAX_RDI_32 = bytes.fromhex("488b4720")     # mov rax, [rdi+0x20]   (the free pointer)
REP_MOVSB = bytes.fromhex("f3a4")
CALL_MEM = bytes.fromhex("ff5708")             # call [rdi+8]


def slot(i: int) -> int:
    return SLAB + 64 * i


@pytest.fixture
def guest():
    g = FakeSlub()
    g.freelist(5, 10)
    return g


def engine_for(guest, scoped: bool = True, fresh: bool = False, ctor_ran: bool = True,
               **options) -> Engine:
    """An engine tracking the fake slab; SCOPED: its cache is tracked (else: module scope)."""
    ctx = guest.ctx
    memory = ThroughHidden(ctx.vmem, HiddenPages(guest.mem, lambda: None))
    engine = Engine(ctx, memory, Options(**options), lambda pc: pc == ALLOC_PC,
                    in_scope=lambda cache: scoped)
    cache = read_caches(ctx)[0]
    engine.track_slab(slab_at(ctx, SLAB), cache, fresh=fresh, ctor_ran=ctor_ran)
    return engine


def access(engine, code: bytes, pc: int = USER_PC, **regs):
    full = dict(REGS, rip=pc, rsp=0xFFFF_C900_0000_8000, rflags=0x246, cs=0x10, ss=0x18,
                orig_ax=-1)
    full.update(regs)
    out = engine.handle(full, code + b"\x90" * 14)
    for where, data in out.writes:               # the glue applies them, after the decision
        engine.memory.write(where, data)
    return out


def test_existing_objects_start_initialized_free_ones_freed(guest):
    engine = engine_for(guest)
    assert engine.shadow.get(slot(4), 64) == bytes([INITIALIZED]) * 64
    assert engine.shadow.get(slot(5), 64) == bytes([FREED]) * 64
    assert engine.tracked_objects() == 62            # 64 slots, 2 on the freelist
    assert access(engine, MOV_EAX_RDI, rdi=slot(4)).findings == []


def test_allocation_seen_through_the_allocator_gives_an_uninitialized_object(guest):
    engine = engine_for(guest)
    # SLUB reads slot 5's free pointer while handing it out, then it leaves the freelist.
    assert access(engine, MOV_RAX_RDI_32, pc=ALLOC_PC, rdi=slot(5)).findings == []
    guest.freelist(10)
    out = access(engine, MOV_EAX_RDI, rdi=slot(5) + 8)
    (f,) = out.findings
    assert (f.kind, f.access, f.size, f.address) == ("uninitialized", "read", 4, slot(5) + 8)
    assert f.object.start == slot(5) and f.origin.object == slot(5)
    assert f.title.startswith("Caught 32-bit read from uninitialized memory")
    assert out.regs["rip"] == USER_PC + 2                    # the load was completed
    # Reported bytes are not reported again (kmemcheck marks them initialized).
    assert access(engine, MOV_EAX_RDI, rdi=slot(5) + 8).findings == []
    # A write initializes: the next read of those bytes is fine.
    assert access(engine, MOV_RDI_RAX, rdi=slot(5) + 16, rax=7).findings == []
    assert access(engine, MOV_EAX_RDI, rdi=slot(5) + 16).findings == []
    assert guest.mem.read(slot(5) + 16 - PO, 8) == (7).to_bytes(8, "little")


def test_free_then_access_is_reported_as_freed(guest):
    engine = engine_for(guest)
    access(engine, bytes.fromhex("48894720"), pc=ALLOC_PC, rdi=slot(6))   # kfree writes the free pointer
    guest.freelist(6, 5, 10)
    (f,) = access(engine, MOV_EAX_RDI, rdi=slot(6)).findings
    assert (f.kind, f.access) == ("freed", "read")
    (w,) = access(engine, MOV_RDI_RAX, rdi=slot(6)).findings
    assert (w.kind, w.access) == ("freed", "write")


def test_partial_ok_and_its_absence(guest):
    engine = engine_for(guest)
    engine.shadow.set(slot(4), 64, UNINITIALIZED)
    engine.shadow.set(slot(4), 2, INITIALIZED)
    assert access(engine, MOV_EAX_RDI, rdi=slot(4)).findings == []          # 16 of 32 bits set
    engine.options.partial_ok = False
    engine.shadow.set(slot(4), 2, INITIALIZED)
    engine.shadow.set(slot(4) + 2, 2, UNINITIALIZED)
    (f,) = access(engine, MOV_EAX_RDI, rdi=slot(4)).findings
    assert f.first_bad == slot(4) + 2


def test_copy_between_objects_carries_shadow_and_origin(guest):
    engine = engine_for(guest)
    access(engine, MOV_RAX_RDI_32, pc=ALLOC_PC, rdi=slot(5))
    guest.freelist(10)
    access(engine, MOV_RDI_RAX, rdi=slot(5), rax=1)          # slot 5: a new object, 8 bytes set
    out = access(engine, REP_MOVSB, rsi=slot(5), rdi=slot(7), rcx=64)
    assert out.findings == [] and out.regs["rcx"] == 0
    assert engine.shadow.get(slot(7), 16) == bytes([INITIALIZED]) * 8 + bytes([UNINITIALIZED]) * 8
    (f,) = access(engine, MOV_EAX_RDI, rdi=slot(7) + 8).findings
    assert f.object.start == slot(7) and f.origin.object == slot(5)


def test_copy_out_of_view_is_reported_with_its_destination(guest):
    engine = engine_for(guest)
    engine.shadow.set(slot(4) + 20, 4, UNINITIALIZED, origin=0)
    stack = PO + 0x400000                                    # untracked memory
    (f,) = access(engine, REP_MOVSB, rsi=slot(4), rdi=stack, rcx=32).findings
    assert (f.kind, f.size, f.first_bad, f.copy_to, f.copy_size) == (
        "uninitialized", 1, slot(4) + 20, stack, 32)
    assert f.object_shadow[20:24] == "uuuu"


def test_limit_and_one_shot(guest):
    engine = engine_for(guest, report_limit=2)
    for i in (1, 2, 3):
        engine.shadow.set(slot(i), 64, UNINITIALIZED)
        access(engine, MOV_EAX_RDI, rdi=slot(i))
    assert len(engine.reports) == 2 and engine.stats.lost == 1 and engine.stats.findings == 3
    engine = engine_for(guest, one_shot=True)
    engine.shadow.set(slot(1), 64, UNINITIALIZED)
    out = access(engine, MOV_EAX_RDI, rdi=slot(1))
    assert out.turn_off and len(engine.reports) == 1


def test_pushes_are_single_stepped_not_emulated(guest):
    """call [mem] would push onto the stack holding the exception frame: not emulated."""
    engine = engine_for(guest)
    guest.u64(slot(4) + 8, 0xFFFF_FFFF_8100_0000)
    out = access(engine, CALL_MEM, rdi=slot(4))
    assert out.regs is None and engine.stats.stepped == 1 and out.findings == []


def test_scope():
    scope = Scope(caches={"kmalloc-*"}, notrack={"kmalloc-64"})
    assert scope.tracks_cache("kmalloc-32") and not scope.tracks_cache("kmalloc-64")
    assert not Scope(all=True).tracks_cache("task_struct") and Scope(all=True).tracks_cache("dentry")
    assert scope.describe() == "cache kmalloc-* (not: cache kmalloc-64)" and Scope().empty
