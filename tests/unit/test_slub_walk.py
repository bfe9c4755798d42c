"""The SLUB walker on a fake guest: one cache, one slab, freelists plain and hardened."""
import struct

import numpy as np
import pytest

from gdbext.core.heap.context import GuestContext
from gdbext.core.heap.model import HeapBuilder
from gdbext.core.heap.slub import SlubWalker, read_caches, swab64
from gdbext.core.kernel import KernelLayout
from gdbext.core.memory import FlatMemory
from gdbext.core.vmem import VirtualMemory

from .fakeguest import FakePageTables

PO = 0xFFFF_8880_0000_0000
RAM = 8 << 20
OFFSETS = {"slab.slab_cache": 0x18, "slab.freelist": 0x20, "slab.counters": 0x28,
           "kmem_cache.list": 0x68, "kmem_cache.name": 0x60, "kmem_cache.size": 0x18,
           "kmem_cache.object_size": 0x1C, "kmem_cache.offset": 0x20, "kmem_cache.inuse": 0x24,
           "kmem_cache.red_left_pad": 0x28, "kmem_cache.flags": 0x08, "kmem_cache.oo": 0x2C,
           "kmem_cache.cpu_slab": 0x00, "kmem_cache_cpu.freelist": 0, "kmem_cache_cpu.slab": 16}
CACHE, NAME, HEAD, CPU = PO + 0x10000, PO + 0x10800, PO + 0x12000, PO + 0x11000
SLAB_PFN, VMEMMAP = 0x300, PO + 0x600000
SLAB = PO + SLAB_PFN * 4096


class FakeSlub:
    def __init__(self, random: int = 0):
        self.mem = FlatMemory(RAM)
        pt = FakePageTables(self.mem, table_base=0x700000)
        for off in range(0, RAM, 1 << 21):
            pt.map(PO + off, off, 1 << 21)
        offsets = dict(OFFSETS, **({"kmem_cache.random": 0x30} if random else {}))
        layout = KernelLayout({"slab_caches": HEAD}, offsets, constants={"PG_slab": 9})
        self.ctx = GuestContext(self.mem, VirtualMemory(self.mem, pt.cr3), layout, PO, VMEMMAP,
                                RAM // 4096, [PO], ram=np.frombuffer(self.mem.buf, np.uint8))
        self.random = random
        self.put(NAME, b"test-64\0")
        self.u64(CACHE + 0x60, NAME)
        for off, value in ((0x18, 64), (0x1C, 64), (0x20, 32), (0x24, 64), (0x2C, 64)):
            self.put(CACHE + off, struct.pack("<I", value))
        self.u64(CACHE + 0x30, random)
        self.u64(CACHE, CPU - PO)                 # cpu_slab: a per-CPU offset, CPU 0 at PO
        self.u64(HEAD, CACHE + 0x68)
        self.u64(CACHE + 0x68, HEAD)
        row = VMEMMAP + SLAB_PFN * 64
        self.u64(row, 1 << 9)                     # PG_slab
        self.u64(row + 0x18, CACHE)
        self.u64(row + 0x28, 64 << 16 | 62)
        self.row = row

    def put(self, vaddr, data):
        self.mem.write(vaddr - PO, data)

    def u64(self, vaddr, value):
        self.put(vaddr, struct.pack("<Q", value))

    def freelist(self, *slots, terminate=True):
        """Chain SLOTS through their free pointers (at offset 32), encoded if hardened."""
        objs = [SLAB + 64 * s for s in slots]
        self.u64(self.row + 0x20, objs[0])
        nexts = objs[1:] + ([0] if terminate else [])
        for obj, nxt in zip(objs, nexts):
            where = obj + 32
            self.u64(where, nxt ^ self.random ^ swab64(where) if self.random else nxt)

    def walk(self):
        caches = read_caches(self.ctx)
        builder = HeapBuilder(caches)
        SlubWalker(self.ctx, self.ctx.memmap()).walk(caches, builder)
        return builder.build()


@pytest.mark.parametrize("random", [0, 0x5A5A_1234_DEAD_BEEF])
def test_free_objects_are_not_heap_objects(random):
    guest = FakeSlub(random)
    guest.freelist(5, 10)
    heap = guest.walk()
    assert heap.caches[0].name == "test-64" and heap.caches[0].random == random
    assert len(heap) == 62 and not heap.errors
    assert heap.find(SLAB + 64 * 5) is None and heap.find(SLAB + 64 * 10 + 8) is None
    assert heap.find(SLAB + 64 * 6 + 63) is not None


def test_cpu_freelist_counts_as_free():
    guest = FakeSlub()
    guest.freelist(5)
    guest.u64(CPU + 16, guest.row)                # this slab is CPU 0's slab...
    guest.u64(CPU, SLAB + 64 * 7)                 # ...with slot 7 on its lockless freelist
    guest.u64(SLAB + 64 * 7 + 32, 0)
    assert len(guest.walk()) == 62


@pytest.mark.parametrize("corruption, message, kind, culprit", [
    ("loop", "loops", "double free", 5),          # 5 freed, 10 freed, 5 freed again
    ("wild", "is not an object", "corrupted freelist", 5)])   # 5's free pointer overwritten
def test_corrupted_freelist_is_a_finding_not_a_hang(corruption, message, kind, culprit):
    guest = FakeSlub()
    if corruption == "loop":
        guest.freelist(5, 10, 5, terminate=False)
    else:
        guest.freelist(5)
        guest.u64(SLAB + 64 * 5 + 32, PO + 0x1234)
    heap = guest.walk()
    assert len(heap.errors) == 1 and message in str(heap.errors[0])
    error = heap.errors[0]
    assert (error.kind, error.cache, error.object) == (kind, "test-64", SLAB + 64 * culprit)
    assert (heap.min_count == 0).all()            # that slab's objects are never reported


def test_object_on_both_freelists_is_a_double_free():
    guest = FakeSlub()
    guest.freelist(5, 7)
    guest.u64(CPU + 16, guest.row)                # CPU 0's lockless freelist holds 7 again
    guest.u64(CPU, SLAB + 64 * 7)
    error = guest.walk().errors[0]
    assert (error.kind, error.object) == ("double free", SLAB + 64 * 7)


def test_rb_tree_in_order():
    from gdbext.core.heap.slub import rb_nodes
    guest = FakeSlub()
    guest.ctx.layout.offsets.update({"rb_node.rb_left": 16, "rb_node.rb_right": 8})
    a, b, c, d = (PO + 0x13000 + 0x20 * i for i in range(4))   # b is the root: a < b < d, c < d
    guest.u64(b + 16, a)
    guest.u64(b + 8, d)
    guest.u64(d + 16, c)
    assert rb_nodes(guest.ctx, b) == [a, b, c, d]
    assert rb_nodes(guest.ctx, 0) == []
