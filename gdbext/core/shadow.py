"""kmemcheck's shadow memory, kept on the host: one state per byte of tracked memory.

States follow arch/x86/mm/kmemcheck/shadow.h (Linux 2.6.31-4.14): unallocated, uninitialized,
initialized, freed, shown in reports as a/u/i/f. Only tracked ranges have shadow; every other byte
is outside kmemcheck's view.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNALLOCATED, UNINITIALIZED, INITIALIZED, FREED = 0, 1, 2, 3
LETTERS = "auif"


@dataclass(frozen=True)
class Verdict:
    """What a read of [address, address+size) finds: the worst state and where it starts."""
    state: int
    first_bad: int | None     # address of the first byte in that state (None when all fine)

    @property
    def ok(self) -> bool:
        return self.state == INITIALIZED


class Shadow:
    """Shadow of tracked pages (PAGE-aligned regions), byte states in numpy arrays."""

    def __init__(self, page_size: int = 4096):
        self.page_size = page_size
        self.pages: dict[int, np.ndarray] = {}

    def track(self, start: int, size: int, state: int = UNALLOCATED) -> None:
        """Give [start, start+size) a shadow (whole pages), initially STATE."""
        for page in range(start & ~(self.page_size - 1), start + size, self.page_size):
            self.pages.setdefault(page, np.full(self.page_size, state, np.uint8))

    def untrack(self, start: int, size: int) -> None:
        for page in range(start & ~(self.page_size - 1), start + size, self.page_size):
            self.pages.pop(page, None)

    def tracked(self, addr: int) -> bool:
        return (addr & ~(self.page_size - 1)) in self.pages

    def _spans(self, start: int, size: int):
        end = start + size
        while start < end:
            page = start & ~(self.page_size - 1)
            n = min(end, page + self.page_size) - start
            yield page, start - page, n
            start += n

    def set(self, start: int, size: int, state: int) -> None:
        """Mark a range (allocation, free, write); untracked parts are ignored."""
        self._store(start, np.full(size, state, np.uint8))

    def _store(self, start: int, states: np.ndarray) -> None:
        pos = 0
        for page, off, n in self._spans(start, len(states)):
            buf = self.pages.get(page)
            if buf is not None:
                buf[off:off + n] = states[pos:pos + n]
            pos += n

    def get(self, start: int, size: int) -> np.ndarray:
        """States of a range; untracked bytes read as INITIALIZED (nothing to say about them)."""
        out = np.full(size, INITIALIZED, np.uint8)
        pos = 0
        for page, off, n in self._spans(start, size):
            buf = self.pages.get(page)
            if buf is not None:
                out[pos:pos + n] = buf[off:off + n]
            pos += n
        return out

    def check_read(self, start: int, size: int, partial_ok: bool = False) -> Verdict:
        """kmemcheck's test: a read is fine when every byte is initialized, or (partial-ok) when
        any byte is: a 16-bit field read with a 32-bit load."""
        states = self.get(start, size)
        if (states == INITIALIZED).all() or (partial_ok and (states == INITIALIZED).any()
                                               and not (states == FREED).any()
                                               and not (states == UNALLOCATED).any()):
            return Verdict(INITIALIZED, None)
        for worst in (FREED, UNALLOCATED, UNINITIALIZED):
            hits = np.nonzero(states == worst)[0]
            if len(hits):
                return Verdict(worst, start + int(hits[0]))
        return Verdict(INITIALIZED, None)

    def copy(self, dst: int, src: int, size: int) -> None:
        """movs between tracked memory: the destination takes the source's states."""
        self._store(dst, self.get(src, size))

    def window(self, addr: int, log2: int = 5) -> tuple[int, str]:
        """(start, letters) of the 2**log2-byte aligned window around ADDR, as kmemcheck prints."""
        size = 1 << log2
        start = addr & ~(size - 1)
        return start, "".join(LETTERS[s] for s in self.get(start, size))
