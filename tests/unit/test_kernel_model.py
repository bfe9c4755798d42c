import struct

import pytest

from gdbext.core import kernel
from gdbext.core.kernel import KernelLayout, list_for_each
from gdbext.core.paging import NotMapped
from gdbext.core.vmem import VirtualMemory

from .fakeguest import FakePageTables

BASE = 0xFFFF_8880_0000_0000


class FakeKernel:
    """A direct map of 16 MiB (4 KiB pages) and helpers to place data in it."""

    def __init__(self):
        self.pt = FakePageTables(table_base=0x0100_0000)
        for off in range(0, 16 << 20, 4096):
            self.pt.map(BASE + off, off)
        self.vm = VirtualMemory(self.pt.mem, self.pt.cr3)
        self.next = BASE + 0x10000

    def alloc(self, size: int) -> int:
        addr = self.next
        self.next += (size + 63) & ~63
        return addr

    def put(self, addr: int, data: bytes) -> None:
        self.vm.write(addr, data)

    def u64(self, addr: int, value: int) -> None:
        self.put(addr, struct.pack("<Q", value))

    def link(self, head: int, nodes: list[int]) -> None:
        chain = [head] + nodes + [head]
        for a, b in zip(chain, chain[1:]):
            self.u64(a, b)        # next
            self.u64(b + 8, a)    # prev


@pytest.fixture
def fk():
    return FakeKernel()


def test_list_walk(fk):
    head = fk.alloc(16)
    nodes = [fk.alloc(64) for _ in range(5)]
    fk.link(head, nodes)
    assert list(list_for_each(fk.vm, head)) == nodes
    fk.link(head, [])
    assert list(list_for_each(fk.vm, head)) == []


def test_list_cycle_and_null_are_reported(fk):
    head, a, b = fk.alloc(16), fk.alloc(16), fk.alloc(16)
    fk.u64(head, a)
    fk.u64(a, b)
    fk.u64(b, a)                   # cycle that never returns to the head
    with pytest.raises(kernel.CorruptList, match="cycle"):
        list(list_for_each(fk.vm, head))
    fk.u64(b, 0)
    with pytest.raises(kernel.CorruptList, match="bad next pointer 0x0"):
        list(list_for_each(fk.vm, head))


def test_kernel_info_from_fake_memory(fk):
    syms = {n: fk.alloc(512) for n in ("init_uts_ns", "saved_command_line", "_totalram_pages",
                                       "max_pfn", "slab_caches", "modules")}
    offsets = {"uts_namespace.name.release": 8 + 65 * 2, "kmem_cache.list": 0x68,
               "module.list": 8, "module.name": 24, "module.core_layout.base": 0x140,
               "module.core_layout.size": 0x148}
    layout = KernelLayout(syms, offsets)
    fk.put(syms["init_uts_ns"] + offsets["uts_namespace.name.release"], b"6.1.99-test\0")
    cmdline = fk.alloc(64)
    fk.put(cmdline, b"console=ttyS0 nokaslr\0")
    fk.u64(syms["saved_command_line"], cmdline)
    fk.u64(syms["_totalram_pages"], 60000)
    fk.u64(syms["max_pfn"], 65536)
    caches = [fk.alloc(256) for _ in range(3)]
    fk.link(syms["slab_caches"], [c + 0x68 for c in caches])
    mod = fk.alloc(0x200)
    fk.put(mod + 24, b"hello\0")
    fk.u64(mod + 0x140, 0xFFFF_FFFF_A000_0000)
    fk.put(mod + 0x148, struct.pack("<I", 0x3000))
    fk.link(syms["modules"], [mod + 8])

    info = kernel.kernel_info(fk.vm, layout)
    assert info.release == "6.1.99-test"
    assert info.cmdline == "console=ttyS0 nokaslr"
    assert info.totalram_bytes == 60000 * 4096 and info.physical_ram_bytes == 256 << 20
    assert info.slab_caches == 3
    assert [(m.name, m.address, m.base, m.size) for m in info.modules] == \
        [("hello", mod, 0xFFFF_FFFF_A000_0000, 0x3000)]
    assert info.bases["vmalloc_base"] == (0xFFFF_C900_0000_0000, "fixed 4-level layout")


def test_layout_reports_missing_symbol():
    with pytest.raises(kernel.KernelModelError, match="no symbol nope"):
        KernelLayout({}, {}).sym("nope")


def test_cstr_stops_at_page_end_safely(fk):
    addr = BASE + (16 << 20) - 4
    fk.put(addr, b"abcd")
    with pytest.raises(NotMapped):
        fk.vm.cstr(addr, 16)           # the next page is not mapped
    assert fk.vm.cstr(addr, 4) == "abcd"


def test_slab_cache_names_follow_slab_caches(fk):
    head = fk.alloc(16)
    layout = KernelLayout({"slab_caches": head}, {"kmem_cache.list": 0x68, "kmem_cache.name": 0x60})
    caches = []
    for name in (b"kmalloc-64", b"dentry"):
        cache, text = fk.alloc(256), fk.alloc(32)
        fk.put(text, name + b"\0")
        fk.u64(cache + 0x60, text)
        caches.append(cache)
    fk.link(head, [c + 0x68 for c in caches])
    assert kernel.slab_cache_names(fk.vm, layout) == ["kmalloc-64", "dentry"]
