import pytest

from gdbext.core import paging
from gdbext.core.hidden import HiddenPages
from gdbext.core.memory import read_u64, write_u64

from .fakeguest import FakePageTables

DIRECT = 0xFFFF_8880_0000_0000
VMALLOC = 0xFFFF_C900_0000_0000


@pytest.fixture
def pt():
    return FakePageTables()


def test_4k_translation_and_entry_location(pt):
    pte_addr = pt.map(VMALLOC + 0x5000, 0x0ABC_D000)
    t = paging.translate(pt.mem, pt.cr3, VMALLOC + 0x5123)
    assert t.paddr == 0x0ABC_D123
    assert t.page_size == 4096
    assert t.leaf.paddr == pte_addr and t.leaf.name == "PTE"
    assert t.flags == ["P", "RW", "A", "D", "G"]


def test_2m_and_1g_pages(pt):
    pt.map(DIRECT, 0x0020_0000, 1 << 21)
    pt.map(DIRECT + (1 << 30), 0x4000_0000, 1 << 30)
    t2 = paging.translate(pt.mem, pt.cr3, DIRECT + 0x1_2345)
    assert (t2.paddr, t2.page_size, t2.leaf.name) == (0x0021_2345, 1 << 21, "PMD")
    t1 = paging.translate(pt.mem, pt.cr3, DIRECT + (1 << 30) + 0x123_4567)
    assert (t1.paddr, t1.page_size, t1.leaf.name) == (0x4123_4567, 1 << 30, "PUD")


def test_pat_bit_of_large_page_is_not_address(pt):
    pte = pt.map(DIRECT, 0x0020_0000, 1 << 21)
    write_u64(pt.mem, pte, read_u64(pt.mem, pte) | (1 << 12))  # PAT bit of a 2 MiB leaf
    assert paging.translate(pt.mem, pt.cr3, DIRECT + 5).paddr == 0x0020_0005


def test_cr3_low_bits_are_ignored(pt):
    pt.map(VMALLOC, 0x7000)
    assert paging.translate(pt.mem, pt.cr3 | 0x18 | (1 << 63), VMALLOC).paddr == 0x7000


def test_unmapped_and_non_canonical(pt):
    pt.map(VMALLOC, 0x7000)
    with pytest.raises(paging.NotMapped) as exc:
        paging.translate(pt.mem, pt.cr3, VMALLOC + (1 << 39))
    assert exc.value.entry.name == "PGD"
    with pytest.raises(paging.NotMapped) as exc:
        paging.translate(pt.mem, pt.cr3, VMALLOC + 0x1000)   # same table, empty PTE
    assert exc.value.entry.name == "PTE"
    with pytest.raises(paging.NonCanonicalAddress):
        paging.translate(pt.mem, pt.cr3, 0x0000_8000_0000_0000)


def test_find_pte_refuses_large_pages(pt):
    pt.map(DIRECT, 0x0020_0000, 1 << 21)
    with pytest.raises(paging.LargePage, match="2 MiB page.*debug_pagealloc=on"):
        paging.find_pte(pt.mem, pt.cr3, DIRECT + 0x1000)


def test_pte_flip(pt):
    pte_addr = pt.map(VMALLOC, 0x7000)
    pte = paging.find_pte(pt.mem, pt.cr3, VMALLOC)
    paging.set_present(pt.mem, pte, False)
    with pytest.raises(paging.NotMapped):
        paging.translate(pt.mem, pt.cr3, VMALLOC)
    assert paging.find_pte(pt.mem, pt.cr3, VMALLOC).paddr == pte_addr  # still found when hidden
    paging.set_present(pt.mem, paging.find_pte(pt.mem, pt.cr3, VMALLOC), True)
    assert paging.translate(pt.mem, pt.cr3, VMALLOC).paddr == 0x7000


def linux_pte_pfn(value: int) -> int:
    """pte_pfn() of arch/x86/include/asm/pgtable.h with pgtable-invert.h: a non-zero PTE
    without the present bit holds its frame inverted."""
    if value and not value & paging.P:
        value ^= (1 << 64) - 1
    return (value & paging.ADDR_MASK) >> 12


def test_a_hidden_pte_gives_the_kernel_its_real_frame(pt):
    """The kernel reads frames of not-present PTEs (change_page_attr() under debug_pagealloc
    when it frees or maps the page): hiding must keep Linux's inverted-frame convention, or
    the kernel maps garbage (seen: an oops in clear_page on a reused large kmalloc page)."""
    pt.map(VMALLOC, 0xCE0000)
    pte = paging.find_pte(pt.mem, pt.cr3, VMALLOC)
    hidden = paging.set_present(pt.mem, pte, False)
    assert not hidden.present and linux_pte_pfn(hidden.value) == 0xCE0
    # What debug_pagealloc's unmap writes then (P and RW cleared, through pte_pfn/pfn_pte) ...
    freed = hidden.value & ~paging.RW
    assert linux_pte_pfn(freed) == 0xCE0
    # ... and show restores the original entry exactly.
    assert paging.set_present(pt.mem, hidden, True).value == pte.value
    assert paging.set_present(pt.mem, pte, True) == pte          # already present: untouched


class FlushCounter:
    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1


def test_hidden_pages_hide_show_all(pt):
    flush = FlushCounter()
    hidden = HiddenPages(pt.mem, flush)
    for i in range(3):
        pt.map(VMALLOC + i * 4096, 0x7000 + i * 4096)
    hidden.hide(pt.cr3, VMALLOC + 0x10)
    hidden.hide(pt.cr3, VMALLOC + 0x1010)
    hidden.hide(pt.cr3, VMALLOC + 0x1010)    # twice: still one page, one flush
    assert len(hidden) == 2 and flush.count == 2
    assert VMALLOC + 0x1fff in hidden and VMALLOC + 0x2000 not in hidden
    with pytest.raises(paging.NotMapped):
        paging.translate(pt.mem, pt.cr3, VMALLOC + 0x1000)
    assert hidden.show(VMALLOC + 0x1000) and not hidden.show(VMALLOC + 0x2000)
    assert hidden.show_all() == 1
    for i in range(3):
        assert paging.translate(pt.mem, pt.cr3, VMALLOC + i * 4096).paddr == 0x7000 + i * 4096


def test_show_leaves_a_pte_the_guest_changed(pt):
    hidden = HiddenPages(pt.mem, lambda: None)
    pte_addr = pt.map(VMALLOC, 0x7000)
    hidden.hide(pt.cr3, VMALLOC)
    write_u64(pt.mem, pte_addr, 0)         # the guest unmapped it meanwhile (vfree, pagealloc)
    hidden.show_all()
    assert read_u64(pt.mem, pte_addr) == 0


def test_hide_refuses_large_and_unmapped(pt):
    hidden = HiddenPages(pt.mem, lambda: None)
    pt.map(DIRECT, 0x0020_0000, 1 << 21)
    with pytest.raises(paging.LargePage):
        hidden.hide(pt.cr3, DIRECT)
    with pytest.raises(paging.NotMapped):
        hidden.hide(pt.cr3, VMALLOC + (5 << 30))
    assert len(hidden) == 0


def test_a_kept_translation_follows_its_leaf(pt):
    """A module reloaded at the same address maps new frames there: the old translation must
    not be used (seen: an emulated instruction decoded from the previous module's text)."""
    from gdbext.core.vmem import VirtualMemory
    pte_at = pt.map(VMALLOC, 0x7000)
    pt.mem.write(0x7010, b"old!")
    pt.mem.write(0x9010, b"new!")
    vmem = VirtualMemory(pt.mem, pt.cr3)
    assert vmem.read(VMALLOC + 0x10, 4) == b"old!"
    pt.mem.write(pte_at, (0x9000 | 0x63).to_bytes(8, "little"))     # unmapped, mapped again
    assert vmem.read(VMALLOC + 0x10, 4) == b"new!"
