"""kmemcheck's shadow memory, kept on the host: one state per byte of tracked memory.

States follow arch/x86/mm/kmemcheck/shadow.h (Linux 2.6.31-4.14): unallocated, uninitialized,
initialized, freed, shown in reports as a/u/i/f. Only tracked pages have shadow; every other byte
is outside kmemcheck's view and reads as initialized.

Beside the state, each byte carries an origin id (0: none): the allocation that created its
uninitialized value. Origins travel with copies, so a read of copied uninitialized bytes names the
object they came from (what KMSAN calls "uninit was created at").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNALLOCATED, UNINITIALIZED, INITIALIZED, FREED = 0, 1, 2, 3
LETTERS = "auif"
STATE_NAMES = {UNALLOCATED: "unallocated", UNINITIALIZED: "uninitialized",
               INITIALIZED: "initialized", FREED: "freed"}


@dataclass(frozen=True)
class Verdict:
    """What an access to [address, address+size) finds: the worst state and where it starts."""
    state: int
    first_bad: int | None     # address of the first byte in that state (None when all fine)

    @property
    def ok(self) -> bool:
        return self.state == INITIALIZED


class Shadow:
    """Shadow of tracked pages (PAGE-aligned regions): one state byte and one origin id per byte.

    States live in bytearrays, origins in numpy arrays: a check on the per-access path is a
    slice and a count, with no array allocation."""

    def __init__(self, page_size: int = 4096):
        self.page_size = page_size
        self.pages: dict[int, bytearray] = {}
        self.origins: dict[int, np.ndarray] = {}

    def track(self, start: int, size: int, state: int = UNALLOCATED) -> None:
        """Give [start, start+size) a shadow (whole pages), initially STATE."""
        for page in range(start & ~(self.page_size - 1), start + size, self.page_size):
            if page not in self.pages:
                self.pages[page] = bytearray([state]) * self.page_size
                self.origins[page] = np.zeros(self.page_size, np.uint32)

    def untrack(self, start: int, size: int) -> None:
        for page in range(start & ~(self.page_size - 1), start + size, self.page_size):
            self.pages.pop(page, None)
            self.origins.pop(page, None)

    def tracked(self, addr: int) -> bool:
        return (addr & ~(self.page_size - 1)) in self.pages

    def any_tracked(self, start: int, size: int) -> bool:
        return any(page in self.pages for page, _, _ in self._spans(start, size))

    def _spans(self, start: int, size: int):
        end = start + size
        while start < end:
            page = start & ~(self.page_size - 1)
            n = min(end, page + self.page_size) - start
            yield page, start - page, n
            start += n

    def set(self, start: int, size: int, state: int, origin: int = 0) -> None:
        """Mark a range (allocation, free, write); untracked parts are ignored."""
        for page, off, n in self._spans(start, size):
            buf = self.pages.get(page)
            if buf is not None:
                buf[off:off + n] = bytes([state]) * n
                self.origins[page][off:off + n] = origin

    def set_origin(self, start: int, size: int, origin: int) -> None:
        """Give tracked bytes of a range ORIGIN, their states unchanged."""
        for page, off, n in self._spans(start, size):
            buf = self.origins.get(page)
            if buf is not None:
                buf[off:off + n] = origin

    def put(self, start: int, states: bytes, origins) -> None:
        """Set a range's states and origins from arrays (a copy saved earlier)."""
        pos = 0
        for page, off, n in self._spans(start, len(states)):
            buf = self.pages.get(page)
            if buf is not None:
                buf[off:off + n] = states[pos:pos + n]
                self.origins[page][off:off + n] = origins[pos:pos + n]
            pos += n

    def get(self, start: int, size: int) -> bytes:
        """States of a range; untracked bytes read as INITIALIZED (nothing to say about them)."""
        page = start & ~(self.page_size - 1)
        off = start - page
        if off + size <= self.page_size:           # the common case: one page
            buf = self.pages.get(page)
            return bytes([INITIALIZED]) * size if buf is None else bytes(buf[off:off + size])
        out = bytearray()
        for page, off, n in self._spans(start, size):
            buf = self.pages.get(page)
            out += bytes([INITIALIZED]) * n if buf is None else buf[off:off + n]
        return bytes(out)

    def get_origins(self, start: int, size: int) -> np.ndarray:
        out = np.zeros(size, np.uint32)
        pos = 0
        for page, off, n in self._spans(start, size):
            buf = self.origins.get(page)
            if buf is not None:
                out[pos:pos + n] = buf[off:off + n]
            pos += n
        return out

    def check(self, start: int, size: int, partial_ok: bool = False,
              ignore: frozenset[int] = frozenset()) -> Verdict:
        """kmemcheck's test of a read: fine when every byte is initialized, or (partial-ok) when
        any byte is and none is freed or unallocated: a 16-bit field read with a 32-bit load.
        IGNORE holds offsets (from START) whose state does not count (bitfield storage)."""
        states = self.get(start, size)
        if ignore:
            states = bytes(INITIALIZED if i in ignore else s for i, s in enumerate(states))
        good = states.count(INITIALIZED)
        if good == size:
            return Verdict(INITIALIZED, None)
        if partial_ok and good and FREED not in states and UNALLOCATED not in states:
            return Verdict(INITIALIZED, None)
        for worst in (FREED, UNALLOCATED, UNINITIALIZED):
            hit = states.find(worst)
            if hit >= 0:
                return Verdict(worst, start + hit)
        return Verdict(INITIALIZED, None)

    def copy(self, dst: int, src: int, size: int) -> None:
        """movs between memory: the destination takes the source's states and origins (untracked
        source bytes count as initialized)."""
        self.put(dst, self.get(src, size), self.get_origins(src, size))

    def letters(self, start: int, size: int) -> str:
        return "".join(LETTERS[s] for s in self.get(start, size))

    def window(self, addr: int, log2: int = 5) -> tuple[int, str]:
        """(start, letters) of the 2**log2-byte aligned window around ADDR, as kmemcheck prints."""
        size = 1 << log2
        start = addr & ~(size - 1)
        return start, self.letters(start, size)
