"""Where allocations come from, on fake memory: page_owner records, call sites (tail calls
included), the running task, and the fail-alloc plan."""
import struct

import numpy as np

from gdbext.core.allocsites import FailurePlan
from gdbext.core.codescan import CALL_REL32, JMP_REL32, call_target, calls_to
from gdbext.core.heap.context import GuestContext
from gdbext.core.heap.pageowner import PFN_SECTION_SHIFT, page_owner, requested_from, task_names
from gdbext.core.kernel import KernelLayout
from gdbext.core.memory import FlatMemory
from gdbext.core.roots import current_task, task_identity
from gdbext.core.vmem import VirtualMemory

PO = 0xFFFF_8880_0000_0000
RAM = 4 << 20
# Where the fake kernel keeps things (direct-map addresses).
MEM_SECTION, ROOT, PAGE_EXT, DEPOT, RECORD = (PO + 0x1000, PO + 0x2000, PO + 0x10000,
                                              PO + 0x3000, PO + 0x4000)
SYMBOLS = {"mem_section": PO + 0x100, "page_ext_size": PO + 0x108, "page_owner_ops": PO + 0x110,
           "page_owner_inited": PO + 0x130, "stack_slabs": DEPOT, "current_task": 0x40}
OFFSETS = {"mem_section.page_ext": 16, "page_ext_operations.offset": 0, "page_owner.handle": 8,
           "page_owner.pid": 56, "page_owner.comm": 40, "page_owner.ts_nsec": 24, "stack_record.size": 12,
           "stack_record.entries": 24, "task_struct.pid": 0x10, "task_struct.comm": 0x20}
EXT_SIZE, OWNER_OFFSET = 72, 8


class FakeKernel:
    def __init__(self):
        self.mem = FlatMemory(RAM)
        layout = KernelLayout(dict(SYMBOLS), dict(OFFSETS), sizes={"mem_section": 32})
        self.ctx = GuestContext(self.mem, VirtualMemory(self.mem, 0), layout, PO, 0, RAM // 4096,
                                [0], ram=np.frombuffer(self.mem.buf, np.uint8))

    def put(self, vaddr, fmt, *values):
        self.mem.write(vaddr - PO, struct.pack(fmt, *values))

    def record_owner(self, pfn: int, pid: int, comm: bytes, stack: list[int], when: int = 0):
        """Section 0 of root 0 holds page_ext entries biased by pfn 0; one depot record."""
        self.put(SYMBOLS["mem_section"], "<Q", ROOT)
        self.put(ROOT, "<Q", MEM_SECTION)
        self.put(MEM_SECTION + 16, "<Q", PAGE_EXT)
        self.put(SYMBOLS["page_ext_size"], "<Q", EXT_SIZE)
        self.put(SYMBOLS["page_owner_ops"], "<Q", OWNER_OFFSET)
        self.put(SYMBOLS["page_owner_inited"], "<I", 1)
        self.put(DEPOT, "<Q", RECORD)                       # stack_slabs[0]
        self.put(RECORD + 12, "<I", len(stack))
        self.put(RECORD + 24, f"<{len(stack)}Q", *stack)
        owner = PAGE_EXT + pfn * EXT_SIZE + OWNER_OFFSET
        self.put(owner + 8, "<I", 1 << 26)                  # handle: slab 0, offset 0, valid
        self.put(owner + 40, "16s", comm)
        self.put(owner + 56, "<i", pid)
        self.put(owner + 24, "<Q", when)


def test_page_owner_names_who_allocated_a_page():
    k = FakeKernel()
    k.record_owner(7, 29, b"insmod", [0xFFFFFFFF81000010, 0xFFFFFFFFA0000020])
    owner = page_owner(k.ctx, 7)
    assert (owner.pid, owner.comm, owner.stack) == (29, "insmod", [0xFFFFFFFF81000010, 0xFFFFFFFFA0000020])
    assert page_owner(k.ctx, 8) is None                     # never allocated: no handle
    assert page_owner(k.ctx, 1 << PFN_SECTION_SHIFT << 7) is None   # a root never set up
    k.put(SYMBOLS["page_owner_inited"], "<I", 0)            # booted without page_owner=on
    assert page_owner(k.ctx, 7) is None


def test_exited_tasks_are_named_from_the_pages_they_allocated():
    k = FakeKernel()
    k.record_owner(7, 29, b"insmod", [1])
    k.record_owner(300, 31, b"leaky-test", [1], when=2000)
    k.record_owner(301, 31, b"sh", [1], when=1000)         # allocated before its exec()
    assert task_names(k.ctx, {31, 29, 99}) == {29: "insmod", 31: "leaky-test"}
    assert task_names(k.ctx, set()) == {}


def test_page_allocator_frames_are_dropped_from_a_page_owner_stack():
    names = {1: "get_page_from_freelist", 2: "__alloc_pages", 3: "__kmalloc_large_node", 4: "drv_probe"}
    assert requested_from([1, 2, 3, 4], names.get) == [3, 4]
    assert requested_from([1, 2], names.get) == [2]          # never empty


def test_calls_and_tail_calls_to_a_function():
    base, target = 0xFFFFFFFFA0000000, 0xFFFFFFFF81234560
    code = bytearray(b"\x90" * 32)
    for at, opcode in ((2, CALL_REL32), (20, JMP_REL32)):
        code[at] = opcode
        code[at + 1:at + 5] = struct.pack("<i", target - (base + at + 5))
    assert calls_to(bytes(code), base, [target]) == [(base + 2, target)]
    both = calls_to(bytes(code), base, [target], (CALL_REL32, JMP_REL32))
    assert both == [(base + 2, target), (base + 20, target)]
    assert call_target(bytes(code[20:25]), base + 20) is None
    assert call_target(bytes(code[20:25]), base + 20, (CALL_REL32, JMP_REL32)) == target


def test_current_task_from_the_cpu_gs_base():
    k = FakeKernel()
    task = PO + 0x8000
    k.put(PO + 0x20000 + 0x40, "<Q", task)                  # per-CPU current_task of this CPU
    k.put(task + 0x10, "<i", 42)
    k.put(task + 0x20, "16s", b"modprobe")
    assert current_task(k.ctx.vmem, k.ctx.layout, PO + 0x20000) == task
    assert task_identity(k.ctx.vmem, k.ctx.layout, task) == (42, "modprobe")


def test_failure_plan_fails_exactly_the_nth_call():
    plan = FailurePlan("drv", 3)
    assert [plan.count() for _ in range(5)] == [False, False, True, False, False]
    assert plan.to_json()["calls"] == 5
