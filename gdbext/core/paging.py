"""x86-64 4-level page tables read and changed through guest physical memory.

Everything here works on a PhysicalMemory and a cr3 value, so the unit tests build page tables
in a FakeMemory. 5-level paging (cr4.LA57) is refused: the guest kernels kmemgdb builds use 4.
"""
from __future__ import annotations

from dataclasses import dataclass

from .memory import PhysicalMemory, read_u64, write_u64

PAGE_SIZE = 4096
ADDR_MASK = 0x000F_FFFF_FFFF_F000
CR4_LA57 = 1 << 12

P, RW, US, PWT, PCD, A, D, PS, G = (1 << n for n in range(9))
NX = 1 << 63
FLAG_NAMES = [(P, "P"), (RW, "RW"), (US, "US"), (PWT, "PWT"), (PCD, "PCD"), (A, "A"), (D, "D"),
              (PS, "PS"), (G, "G"), (NX, "NX")]

# level number -> (name, shift of the index, page size when the entry is a leaf)
LEVELS = {4: ("PGD", 39, None), 3: ("PUD", 30, 1 << 30), 2: ("PMD", 21, 1 << 21), 1: ("PTE", 12, 1 << 12)}


class PagingError(Exception):
    """Base of page-table walk errors."""


class NonCanonicalAddress(PagingError):
    def __init__(self, vaddr: int):
        super().__init__(f"{vaddr:#x} is not a canonical x86-64 address")


class NotMapped(PagingError):
    """The walk met a not-present entry above the 4 KiB level, or the leaf is not present."""

    def __init__(self, vaddr: int, entry: "Entry"):
        super().__init__(f"{vaddr:#x} is not mapped: {entry.name} entry {entry.value:#018x} "
                         f"at physical {entry.paddr:#x} is not present")
        self.vaddr = vaddr
        self.entry = entry


class LargePage(PagingError):
    """A 4 KiB operation on an address mapped by a 2 MiB or 1 GiB page."""

    def __init__(self, vaddr: int, entry: "Entry"):
        size = "2 MiB" if entry.level == 2 else "1 GiB"
        super().__init__(f"guest page {vaddr:#x} is mapped by a {size} page ({entry.name} entry at "
                         f"physical {entry.paddr:#x}); only 4 KiB pages can be hidden: boot the "
                         f"guest with debug_pagealloc=on to map the direct map with 4 KiB pages")
        self.vaddr = vaddr
        self.entry = entry


@dataclass(frozen=True)
class Entry:
    """One page-table entry: its level (4=PGD .. 1=PTE), where it lives and its value."""
    level: int
    paddr: int
    value: int

    @property
    def name(self) -> str:
        return LEVELS[self.level][0]

    @property
    def present(self) -> bool:
        return bool(self.value & P)

    @property
    def is_leaf(self) -> bool:
        return self.level == 1 or (self.level in (2, 3) and bool(self.value & PS))

    @property
    def page_size(self) -> int:
        return LEVELS[self.level][2] or 0

    @property
    def frame(self) -> int:
        """Physical base of the page or next table this entry points to."""
        if self.level == 1 or not self.is_leaf:
            return self.value & ADDR_MASK
        return self.value & ADDR_MASK & ~(self.page_size - 1)  # bit 12 is PAT in large leaves


@dataclass(frozen=True)
class Translation:
    """Where a virtual address lives: physical address, page size, the leaf entry."""
    vaddr: int
    paddr: int
    page_size: int
    leaf: Entry

    @property
    def flags(self) -> list[str]:
        return flag_names(self.leaf.value)


def flag_names(value: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES if value & bit]


def is_canonical(vaddr: int) -> bool:
    top = vaddr >> 47
    return top == 0 or top == (1 << 17) - 1


def table_base(cr3: int) -> int:
    """Physical address of the top-level table from cr3 (PCID and no-flush bits dropped)."""
    return cr3 & ADDR_MASK


def walk(mem: PhysicalMemory, cr3: int, vaddr: int) -> list[Entry]:
    """The entries a hardware walk of VADDR reads, ending at a leaf or a not-present entry."""
    if not 0 <= vaddr < 1 << 64 or not is_canonical(vaddr):
        raise NonCanonicalAddress(vaddr)
    entries: list[Entry] = []
    table = table_base(cr3)
    for level in (4, 3, 2, 1):
        index = (vaddr >> LEVELS[level][1]) & 0x1FF
        paddr = table + 8 * index
        entry = Entry(level, paddr, read_u64(mem, paddr))
        entries.append(entry)
        if not entry.present or entry.is_leaf:
            break
        table = entry.frame
    return entries


def translate(mem: PhysicalMemory, cr3: int, vaddr: int) -> Translation:
    """Translate VADDR like the MMU would; NotMapped when it would fault as not present."""
    leaf = walk(mem, cr3, vaddr)[-1]
    if not leaf.present:
        raise NotMapped(vaddr, leaf)
    return Translation(vaddr, leaf.frame + (vaddr & (leaf.page_size - 1)), leaf.page_size, leaf)


def find_pte(mem: PhysicalMemory, cr3: int, vaddr: int) -> Entry:
    """The 4 KiB PTE mapping VADDR, present or not; LargePage or NotMapped when there is none."""
    last = walk(mem, cr3, vaddr)[-1]
    if last.level == 1:
        return last
    if last.present and last.is_leaf:
        raise LargePage(vaddr, last)
    raise NotMapped(vaddr, last)


def not_present(value: int) -> int:
    """A present PTE VALUE made not present the way Linux writes not-present PTEs on x86-64:
    the frame bits inverted (the L1TF mitigation, arch/x86/include/asm/pgtable-invert.h), so
    that kernel code reading the frame of a not-present PTE (pte_pfn(), as change_page_attr()
    does when debug_pagealloc maps or unmaps a page) finds the real frame. A PTE with its
    present bit merely cleared reads as frame ~F there, and the kernel maps that garbage."""
    return (value & ~P) ^ ADDR_MASK


def present_again(value: int) -> int:
    """The present PTE a not_present() VALUE came from."""
    return (value ^ ADDR_MASK) | P


def set_present(mem: PhysicalMemory, entry: Entry, present: bool) -> Entry:
    """Write ENTRY back present or not present (frame inverted as Linux keeps it); returns
    the entry as written."""
    if present == entry.present:
        return entry
    value = present_again(entry.value) if present else not_present(entry.value)
    write_u64(mem, entry.paddr, value)
    return Entry(entry.level, entry.paddr, value)
