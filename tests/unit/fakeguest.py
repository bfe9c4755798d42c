"""Page tables built in FakeMemory, the way the guest kernel lays them out."""
from __future__ import annotations

from gdbext.core import paging
from gdbext.core.memory import FakeMemory, write_u64

KERNEL_FLAGS = paging.P | paging.RW | paging.A | paging.D | paging.G


class FakePageTables:
    """Allocates table pages from NEXT upward and maps pages of any size."""

    def __init__(self, mem: FakeMemory | None = None, table_base: int = 0x100000):
        self.mem = mem or FakeMemory(1 << 32)
        self.next = table_base
        self.cr3 = self._new_table()

    def _new_table(self) -> int:
        addr = self.next
        self.next += 4096
        return addr

    def _table_for(self, table: int, index: int) -> int:
        entry_addr = table + 8 * index
        value = int.from_bytes(self.mem.read(entry_addr, 8), "little")
        if not value & paging.P:
            value = self._new_table() | paging.P | paging.RW | paging.A
            write_u64(self.mem, entry_addr, value)
        return value & paging.ADDR_MASK

    def map(self, vaddr: int, paddr: int, size: int = 4096, flags: int = KERNEL_FLAGS) -> int:
        """Map one page of SIZE (4 KiB, 2 MiB or 1 GiB); returns the leaf entry's address."""
        leaf_level = {4096: 1, 1 << 21: 2, 1 << 30: 3}[size]
        table = paging.table_base(self.cr3)
        for level in (4, 3, 2, 1):
            index = (vaddr >> paging.LEVELS[level][1]) & 0x1FF
            if level == leaf_level:
                value = paddr | flags | (paging.PS if level > 1 else 0)
                write_u64(self.mem, table + 8 * index, value)
                return table + 8 * index
            table = self._table_for(table, index)
        raise AssertionError("unreachable")
