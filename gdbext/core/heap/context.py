"""What the heap walkers read the guest through: plain values and memory accessors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..kernel import KernelLayout
from ..memory import PhysicalMemory
from ..vmem import VirtualMemory

STRUCT_PAGE_SIZE = 64      # sizeof(struct page), x86-64 6.1 without debug fields
PAGE_SIZE = 4096


@dataclass
class GuestContext:
    phys: PhysicalMemory
    vmem: VirtualMemory
    layout: KernelLayout
    page_offset: int            # page_offset_base: start of the direct map
    vmemmap: int                # vmemmap_base: struct page array
    max_pfn: int
    cpu_offsets: list[int]      # __per_cpu_offset[cpu] for each possible CPU
    symbol_name: Callable[[int], str | None] = lambda addr: None
    ram: np.ndarray | None = None   # uint8 view of guest RAM (file offset = physical address)
    vmalloc_base: int = 0       # start of the vmalloc area (VMALLOC_START)

    def direct_paddr(self, vaddr: int) -> int | None:
        """Physical address of a direct-map address, None outside the direct map."""
        off = vaddr - self.page_offset
        return off if 0 <= off < self.max_pfn * PAGE_SIZE else None

    def __post_init__(self):
        self.vmem.set_direct_map(self.page_offset, self.max_pfn * PAGE_SIZE)

    def read(self, vaddr: int, size: int) -> bytes:
        """Direct-map addresses are read physically (so pages kmemcheck hid read too)."""
        return self.vmem.read(vaddr, size)

    def u64(self, vaddr: int) -> int:
        return int.from_bytes(self.read(vaddr, 8), "little")

    def words(self, vaddr: int, size: int) -> np.ndarray:
        """SIZE bytes at VADDR as uint64 words (a view into RAM when it is contiguous)."""
        paddr = self.direct_paddr(vaddr)
        if paddr is not None and self.ram is not None and paddr + size <= len(self.ram):
            return self.ram[paddr:paddr + size].view(np.uint64)
        return np.frombuffer(self.vmem.read(vaddr, size), np.uint64)

    def memmap(self) -> np.ndarray:
        """struct page array for pfn 0..max_pfn-1 as (max_pfn, 8) uint64 words."""
        return self.words(self.vmemmap, self.max_pfn * STRUCT_PAGE_SIZE).reshape(-1, 8)
