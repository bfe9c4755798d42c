"""Guest kernel virtual memory on top of physical memory and the guest's page tables."""
from __future__ import annotations

import struct

from . import paging
from .memory import PhysicalMemory, read_u64

PAGE_MASK = ~(paging.PAGE_SIZE - 1)


class VirtualMemory:
    """Reads kernel virtual addresses through a page-table walk from CR3.

    A translation is kept with the leaf entry it came from and used again only while that
    entry still holds the same value (one 8-byte read instead of a walk): a module reloaded
    at the same address, a vfree and a new vmalloc there, all rewrite the leaf. Kernel page
    tables above the leaf are not freed on x86-64, so the leaf is what changes. Once the direct
    map is known (set_direct_map), its addresses translate by arithmetic: every page of RAM is
    there, also one kmemcheck hid or debug_pagealloc unmapped while it is free.
    """

    def __init__(self, phys: PhysicalMemory, cr3: int):
        self.phys = phys
        self.cr3 = cr3
        self._pages: dict[int, tuple[int, int, int]] = {}   # page -> (frame, leaf at, leaf)
        self._direct = (0, 0)       # (page_offset_base, bytes of RAM it maps)

    def set_direct_map(self, base: int, size: int) -> None:
        self._direct = (base, size)

    def invalidate(self, cr3: int | None = None) -> None:
        if cr3 is not None:
            self.cr3 = cr3
        self._pages.clear()

    def to_phys(self, vaddr: int) -> int:
        off = vaddr - self._direct[0]
        if 0 <= off < self._direct[1]:
            return off
        page = vaddr & PAGE_MASK
        known = self._pages.get(page)
        if known is None or read_u64(self.phys, known[1]) != known[2]:
            t = paging.translate(self.phys, self.cr3, page)
            known = self._pages[page] = (t.paddr, t.leaf.paddr, t.leaf.value)
        return known[0] + (vaddr - page)

    def read(self, vaddr: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            n = min(size, paging.PAGE_SIZE - (vaddr & (paging.PAGE_SIZE - 1)))
            out += self.phys.read(self.to_phys(vaddr), n)
            vaddr += n
            size -= n
        return bytes(out)

    def write(self, vaddr: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, paging.PAGE_SIZE - ((vaddr + pos) & (paging.PAGE_SIZE - 1)))
            self.phys.write(self.to_phys(vaddr + pos), data[pos:pos + n])
            pos += n

    def u64(self, vaddr: int) -> int:
        return struct.unpack("<Q", self.read(vaddr, 8))[0]

    def u32(self, vaddr: int) -> int:
        return struct.unpack("<I", self.read(vaddr, 4))[0]

    def cstr(self, vaddr: int, limit: int = 256) -> str:
        """A NUL-terminated string of at most LIMIT bytes, stopping at page ends safely."""
        out = bytearray()
        while len(out) < limit:
            chunk = self.read(vaddr + len(out), min(limit - len(out),
                                                   paging.PAGE_SIZE - ((vaddr + len(out)) & 0xFFF)))
            nul = chunk.find(b"\0")
            if nul >= 0:
                out += chunk[:nul]
                break
            out += chunk
        return out.decode("utf-8", errors="replace")
