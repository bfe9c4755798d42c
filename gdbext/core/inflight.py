"""Is a vCPU somewhere between a page fault and the kernel's spurious_kernel_fault() call?

kmemcheck handles a fault on a hidden page at spurious_kernel_fault(). A vCPU stopped earlier
on that path (the entry stub, error_entry, exc_page_fault or a function it called) still has
the fault in flight: showing the page then is not enough, because the kernel never treats a
not-present fault as spurious and would oops. Such a vCPU has to be run up to the hook first."""
from __future__ import annotations

import struct
from dataclasses import dataclass

# Enough for exc_page_fault's frame plus irqentry_enter's callees above the stopped rsp.
STACK_BYTES = 2048


@dataclass(frozen=True)
class FaultPath:
    """[start, end) ranges of the code a kernel-address page fault runs before the hook:
    asm_exc_page_fault, error_entry and exc_page_fault (6.1, x86_64)."""
    ranges: tuple[tuple[int, int], ...]

    def _inside(self, addr: int) -> bool:
        return any(start <= addr < end for start, end in self.ranges)

    def may_be_in_flight(self, pc: int, stack: bytes) -> bool:
        """PC, or a return address in STACK (the bytes at rsp upwards), lies on the path.
        A stale word can only make this say yes too often, which costs a few steps."""
        if self._inside(pc):
            return True
        usable = len(stack) - len(stack) % 8
        return any(self._inside(word) for (word,) in struct.iter_unpack("<Q", stack[:usable]))
