"""Guest physical memory: the RAM file QEMU shares with the host, or a fake for tests.

Reads through the RAM file cost no debugger stop and no gdbstub packet, which is why every bulk
access of kmemgdb goes through it.
"""
from __future__ import annotations

import mmap
import os
import struct
from typing import Protocol

GiB = 1 << 30
FOUR_GIB = 4 * GiB


class MemoryError_(Exception):
    """Base of memory access errors (named to avoid shadowing the builtin MemoryError)."""


class PhysicalAddressError(MemoryError_):
    """A physical address outside guest RAM."""

    def __init__(self, paddr: int, size: int):
        super().__init__(f"physical address {paddr:#x} (+{size}) is outside guest RAM")
        self.paddr = paddr


class PhysicalMemory(Protocol):
    """What the core needs of guest physical memory."""

    def read(self, paddr: int, size: int) -> bytes: ...

    def write(self, paddr: int, data: bytes) -> None: ...


def read_u64(mem: PhysicalMemory, paddr: int) -> int:
    return struct.unpack("<Q", mem.read(paddr, 8))[0]


def write_u64(mem: PhysicalMemory, paddr: int, value: int) -> None:
    mem.write(paddr, struct.pack("<Q", value))


def below_4g_size(ram_size: int, machine: str = "pc") -> int:
    """How much of RAM QEMU places below 4 GiB (the rest starts at 4 GiB).

    QEMU 7.2 pc (i440fx) keeps up to 3.5 GiB low, q35 up to 2 GiB when RAM exceeds 2.75 GiB.
    """
    if machine.startswith("q35"):
        return ram_size if ram_size < 0xB0000000 else 0x80000000
    return ram_size if ram_size < 0xE0000000 else 0xE0000000


class RamFileMemory:
    """Guest RAM mapped from QEMU's shared memory-backend-file (file offset = RAM offset)."""

    def __init__(self, path: str, low_size: int | None = None):
        self.path = path
        fd = os.open(path, os.O_RDWR)
        try:
            self.size = os.fstat(fd).st_size
            self._map = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.low_size = self.size if low_size is None else low_size

    def offset(self, paddr: int, size: int) -> int:
        """File offset of guest physical PADDR, checking that [PADDR, +SIZE) is RAM."""
        if paddr + size <= self.low_size:
            off = paddr
        elif paddr >= FOUR_GIB:
            off = paddr - FOUR_GIB + self.low_size
        else:
            raise PhysicalAddressError(paddr, size)
        if paddr < 0 or off + size > self.size:
            raise PhysicalAddressError(paddr, size)
        return off

    def read(self, paddr: int, size: int) -> bytes:
        off = self.offset(paddr, size)
        return self._map[off:off + size]

    def write(self, paddr: int, data: bytes) -> None:
        off = self.offset(paddr, len(data))
        self._map[off:off + len(data)] = data

    def view(self) -> memoryview:
        """Zero-copy view of the whole file, for bulk scans."""
        return memoryview(self._map)

    def close(self) -> None:
        self._map.close()


class FakeMemory:
    """Sparse physical memory for tests: unwritten bytes read as zero inside SIZE."""

    def __init__(self, size: int = 1 << 32):
        self.size = size
        self._pages: dict[int, bytearray] = {}

    def _check(self, paddr: int, size: int) -> None:
        if paddr < 0 or paddr + size > self.size:
            raise PhysicalAddressError(paddr, size)

    def read(self, paddr: int, size: int) -> bytes:
        self._check(paddr, size)
        out = bytearray()
        while size:
            page, off = divmod(paddr, 4096)
            n = min(size, 4096 - off)
            buf = self._pages.get(page)
            out += buf[off:off + n] if buf is not None else bytes(n)
            paddr += n
            size -= n
        return bytes(out)

    def write(self, paddr: int, data: bytes) -> None:
        self._check(paddr, len(data))
        pos = 0
        while pos < len(data):
            page, off = divmod(paddr + pos, 4096)
            n = min(len(data) - pos, 4096 - off)
            buf = self._pages.setdefault(page, bytearray(4096))
            buf[off:off + n] = data[pos:pos + n]
            pos += n


class FlatMemory:
    """Contiguous fake RAM (physical address = offset), with a numpy-able view like the RAM file."""

    def __init__(self, size: int):
        self.size = size
        self.buf = bytearray(size)

    def read(self, paddr: int, size: int) -> bytes:
        if paddr < 0 or paddr + size > self.size:
            raise PhysicalAddressError(paddr, size)
        return bytes(self.buf[paddr:paddr + size])

    def write(self, paddr: int, data: bytes) -> None:
        if paddr < 0 or paddr + len(data) > self.size:
            raise PhysicalAddressError(paddr, len(data))
        self.buf[paddr:paddr + len(data)] = data

    def view(self) -> memoryview:
        return memoryview(self.buf)
