"""The leak scanner on fake memory: a direct map of 8 MiB with objects placed by hand."""
import struct

import numpy as np

from gdbext.core.heap.context import GuestContext
from gdbext.core.heap.model import (LARGE, MIN_COUNT_BLACK, MIN_COUNT_GRAY, SLAB, VMALLOC,
                                    CacheInfo, Extra, HeapBuilder, SlabGroup)
from gdbext.core.kernel import KernelLayout
from gdbext.core.leaks import Root, root_id, scan
from gdbext.core.memory import FlatMemory
from gdbext.core.vmem import VirtualMemory

PO = 0xFFFF_8880_0000_0000
RAM = 8 << 20


class Guest:
    def __init__(self):
        self.mem = FlatMemory(RAM)
        self.ctx = GuestContext(self.mem, VirtualMemory(self.mem, 0), KernelLayout({}, {}),
                                PO, 0, RAM // 4096, [0],
                                ram=np.frombuffer(self.mem.buf, np.uint8))
        self.builder = HeapBuilder([])
        self.roots = []

    def put(self, vaddr, *words):
        self.mem.write(vaddr - PO, struct.pack(f"<{len(words)}Q", *words))

    def obj(self, addr, size, kind=LARGE, min_count=1, extra=None):
        self.builder.add_object(PO + addr, size, kind, min_count, extra)
        return PO + addr

    def root(self, addr, size, name="data"):
        self.roots.append(Root(name, PO + addr, size))
        return PO + addr

    def scan(self, registers=()):
        heap = self.builder.build()
        return heap, scan(self.ctx, heap, self.roots, list(registers))


def leaked(heap, result):
    return {int(heap.start[i]) - PO for i in result.leaks}


def test_gray_propagation_and_leaks():
    g = Guest()
    r = g.root(0x1000, 64)
    a, b = g.obj(0x10000, 64), g.obj(0x20000, 64)
    g.obj(0x30000, 64)
    g.put(r, a)
    g.put(a + 8, b)
    heap, res = g.scan()
    assert leaked(heap, res) == {0x30000}
    ia, ib = heap.find(a), heap.find(b)
    assert res.parent[ia] == root_id(0) and res.parent_addr[ia] == r
    assert res.parent[ib] == ia and res.parent_addr[ib] == a + 8


def test_interior_pointer_and_register_references():
    g = Guest()
    r = g.root(0x1000, 64)
    a, b = g.obj(0x10000, 256), g.obj(0x20000, 256)
    g.put(r + 16, a + 200)                 # interior pointer
    heap, res = g.scan(registers=[b + 255])
    assert leaked(heap, res) == set()
    g.put(r + 16, a + 256)                 # one past the end is not a reference
    heap, res = g.scan()
    assert leaked(heap, res) == {0x10000, 0x20000}


def test_self_reference_does_not_count():
    g = Guest()
    a = g.obj(0x10000, 64)
    g.put(a, a, a + 8)
    heap, res = g.scan()
    assert leaked(heap, res) == {0x10000}


def test_unreferenced_objects_do_not_keep_others_alive_and_are_classed():
    g = Guest()
    d, e, f = g.obj(0x10000, 64), g.obj(0x20000, 64), g.obj(0x30000, 64)
    g.put(d, e)
    g.put(e, f)
    heap, res = g.scan()
    assert leaked(heap, res) == {0x10000, 0x20000, 0x30000}
    idx = {a: heap.find(a) for a in (d, e, f)}
    assert res.direct[idx[d]] and not res.direct[idx[e]] and not res.direct[idx[f]]
    assert res.owner[idx[e]] == idx[d] and res.owner[idx[f]] == idx[d]
    assert int(heap.start[res.leaks[0]]) == d          # direct leaks come first


def test_cycle_of_leaks_gets_one_direct_representative():
    g = Guest()
    a, b = g.obj(0x10000, 64), g.obj(0x20000, 64)
    g.put(a, b)
    g.put(b, a)
    heap, res = g.scan()
    assert leaked(heap, res) == {0x10000, 0x20000}
    assert res.direct.sum() == 1 and res.direct[heap.find(a)]
    assert res.owner[heap.find(b)] == heap.find(a)


def test_not_leak_and_ignore():
    g = Guest()
    n = g.obj(0x10000, 64, min_count=MIN_COUNT_GRAY)     # kmemleak_not_leak: scanned root
    x = g.obj(0x20000, 64, min_count=MIN_COUNT_BLACK)    # kmemleak_ignore: not scanned
    a, b = g.obj(0x30000, 64), g.obj(0x40000, 64)
    g.put(n, a)
    g.put(x, b)
    heap, res = g.scan()
    assert leaked(heap, res) == {0x40000}


def test_vmalloc_needs_two_references_and_surplus_vm_struct_references_count():
    g = Guest()
    r = g.root(0x1000, 64)
    vm = g.obj(0x10000, 64)                           # struct vm_struct (kmalloc-64)
    area = g.obj(0x100000, 8192, VMALLOC, 2, Extra(vm_struct=vm))
    g.put(vm + 8, area)                               # vm_struct.addr
    g.put(r, vm)                                      # vmap_area.vm: the vm_struct is live
    heap, res = g.scan()
    assert leaked(heap, res) == {0x100000}            # only the vm_struct points at it
    g.put(r + 8, vm)                                  # a second, surplus reference to vm_struct
    heap, res = g.scan()
    assert leaked(heap, res) == set()
    g.put(r + 8, 0)
    g.put(r + 16, area + 100)                         # a user pointer into the area
    heap, res = g.scan()
    assert leaked(heap, res) == set()


def test_slab_group_free_slots_are_neither_scanned_nor_targets():
    g = Guest()
    cache = CacheInfo(0, "kmalloc-64", 64, 64, 32, 64, 0, 0, 0, 64, 4096)
    g.builder.caches.append(cache)
    slab_paddr = 0x200000
    live = np.ones((1, 64), bool)
    live[0, 3] = False                                # slot 3 is free
    g.builder.add_group(SlabGroup(cache, np.array([PO + slab_paddr], np.uint64),
                                  np.array([slab_paddr], np.uint64), live))
    slot = lambda i: PO + slab_paddr + 64 * i
    r = g.root(0x1000, 64)
    other = g.obj(0x300000, 64)
    g.put(r, slot(0))
    g.put(slot(0) + 8, slot(1))                       # live slot 0 -> slot 1
    g.put(slot(3), other)                             # a free slot's stale pointer
    g.put(r + 8, slot(3))                             # pointer to a free slot
    heap, res = g.scan()
    leaks = leaked(heap, res)
    assert 0x300000 in leaks and slab_paddr + 64 * 3 not in leaks
    assert slab_paddr not in leaks and slab_paddr + 64 not in leaks
    assert len(heap) == 64 and int((heap.kind == SLAB).sum()) == 63
    assert len(leaks) == 63 - 2 + 1     # unreferenced live slots, plus `other`


def test_empty_heap():
    g = Guest()
    g.root(0x1000, 64)
    heap, res = g.scan()
    assert len(heap) == 0 and len(res.leaks) == 0


def test_scan_areas_and_no_scan():
    """kmemleak_scan_area(): only the areas of an object are scanned; kmemleak_no_scan(): none."""
    from gdbext.core.leakstate import NO_SCAN, SCAN_AREA, Annotations
    g = Guest()
    r = g.root(0x1000, 64)
    holder, noscan = g.obj(0x10000, 512), g.obj(0x18000, 64)
    near, far, behind = g.obj(0x20000, 64), g.obj(0x30000, 64), g.obj(0x40000, 64)
    g.put(r, holder, noscan)
    g.put(holder, near)
    g.put(holder + 256, far)
    g.put(noscan, behind)
    notes = Annotations()
    notes.record(SCAN_AREA, holder + 256, 8)
    notes.record(NO_SCAN, noscan)
    notes.record(SCAN_AREA, PO + 0x7000, 8)         # no object there: forgotten
    heap = g.builder.build()
    notes.apply(heap)
    res = scan(g.ctx, heap, g.roots, [])
    assert leaked(heap, res) == {0x20000, 0x40000}
    assert list(notes.areas) == [holder + 256]
    notes.record(SCAN_AREA, holder, (1 << 64) - 1)  # SIZE_MAX: to the end of the object
    heap = g.builder.build()
    notes.apply(heap)
    assert leaked(heap, scan(g.ctx, heap, g.roots, [])) == {0x40000}


def test_update_trace_follows_its_object():
    from gdbext.core.leakstate import UPDATE_TRACE, Annotations
    g = Guest()
    a = g.obj(0x10000, 64)
    notes = Annotations()
    notes.record(UPDATE_TRACE, a + 8, trace=[0xFFFFFFFF81000000])
    notes.record(UPDATE_TRACE, PO + 0x50000, trace=[1])     # freed since: forgotten
    heap = g.builder.build()
    notes.apply(heap)
    assert notes.trace_of(heap, heap.find(a)) == [0xFFFFFFFF81000000]
    assert len(notes.traces) == 1


def test_objects_queued_by_kfree_rcu_are_not_leaks():
    """kvfree_call_rcu() ignores what it queues; the queue pages are scanned as roots instead."""
    from gdbext.core.roots import kfree_rcu_roots
    g = Guest()
    offsets = {"kfree_rcu_cpu.bkvhead": 8, "kfree_rcu_cpu.krw_arr": 24, "kfree_rcu_cpu.lock": 24 + 2 * 48,
               "kfree_rcu_cpu_work.bkvhead_free": 24, "kvfree_rcu_bulk_data.nr_records": 0,
               "kvfree_rcu_bulk_data.next": 8, "kvfree_rcu_bulk_data.records": 16}
    g.ctx.layout = KernelLayout({"krc": PO + 0x1000}, offsets, sizes={"kfree_rcu_cpu_work": 48})
    waiting, queued = PO + 0x2000, PO + 0x3000              # two pages of pointers
    a, b, c = g.obj(0x10000, 64), g.obj(0x20000, 64), g.obj(0x30000, 64)
    g.put(PO + 0x1000 + 8 + 8, queued)                      # bkvhead[1]
    g.put(queued, 1, 0, a)
    g.put(PO + 0x1000 + 24 + 48 + 24, waiting)              # krw_arr[1].bkvhead_free[0]
    g.put(waiting, 1, 0, b)
    g.roots = kfree_rcu_roots(g.ctx)
    assert [r.size for r in g.roots] == [8, 8]
    heap, res = g.scan()
    assert leaked(heap, res) == {0x30000} and c == PO + 0x30000
