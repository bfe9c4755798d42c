"""The one owner of every guest page kmemgdb has hidden (PTE present bit cleared).

Whoever hides a page registers it here, and disable, detach, error and Ctrl-C paths call
show_all(), so the guest never keeps a page the tool made unreachable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import paging
from .memory import PhysicalMemory, read_u64
from .vmem import VirtualMemory


@dataclass
class HiddenPage:
    vaddr: int          # page-aligned virtual address
    pte_paddr: int      # where the PTE lives in guest physical memory
    hidden_value: int   # the PTE as kmemgdb wrote it (not present, frame inverted as Linux does)


class HiddenPages:
    """Hide and show 4 KiB guest pages; FLUSH drops stale TLB entries after a hide."""

    def __init__(self, mem: PhysicalMemory, flush: Callable[[], None]):
        self.mem = mem
        self.flush = flush
        self.pages: dict[int, HiddenPage] = {}

    def __len__(self) -> int:
        return len(self.pages)

    def __contains__(self, vaddr: int) -> bool:
        return (vaddr & ~(paging.PAGE_SIZE - 1)) in self.pages

    def hide(self, cr3: int, vaddr: int, flush: bool = True) -> paging.Entry:
        """Clear the present bit of the PTE mapping VADDR (LargePage/NotMapped if impossible).
        A page recorded as hidden whose PTE the guest has rewritten since is hidden anew."""
        page = vaddr & ~(paging.PAGE_SIZE - 1)
        pte = paging.find_pte(self.mem, cr3, page)
        if self.owns(page):
            return pte
        self.pages.pop(page, None)
        if not pte.present:
            raise paging.NotMapped(vaddr, pte)
        written = paging.set_present(self.mem, pte, False)
        self.pages[page] = HiddenPage(page, pte.paddr, written.value)
        if flush:
            self.flush()
        return written

    def show(self, vaddr: int) -> bool:
        """Make the page of VADDR present again; False if kmemgdb had not hidden it."""
        page = self.pages.pop(vaddr & ~(paging.PAGE_SIZE - 1), None)
        if page is None:
            return False
        self._restore(page)
        return True

    def show_all(self) -> int:
        """Show every hidden page (no TLB flush needed: setting P never leaves stale entries)."""
        count = 0
        while self.pages:
            _, page = self.pages.popitem()
            self._restore(page)
            count += 1
        return count

    def _restore(self, page: HiddenPage) -> None:
        current = read_u64(self.mem, page.pte_paddr)
        # The guest may have remapped the page meanwhile (debug_pagealloc unmaps freed pages):
        # then the PTE is no longer ours and setting P would map a page the kernel unmapped.
        if current == page.hidden_value:
            paging.set_present(self.mem, paging.Entry(1, page.pte_paddr, current), True)

    def owns(self, vaddr: int) -> bool:
        """Whether the page of VADDR is hidden by kmemgdb and still as kmemgdb left it: the
        guest rewrites a PTE when it frees or remaps the page (vfree, debug_pagealloc)."""
        page = self.pages.get(vaddr & ~(paging.PAGE_SIZE - 1))
        return page is not None and read_u64(self.mem, page.pte_paddr) == page.hidden_value

    def readopt(self, vaddr: int) -> bool:
        """The guest rewrote the PTE of a page kmemgdb hid but kept it not present and mapping
        the same frame (it changed only flags): kmemgdb's again, as now written."""
        page = self.pages.get(vaddr & ~(paging.PAGE_SIZE - 1))
        if page is None:
            return False
        now = read_u64(self.mem, page.pte_paddr)
        if now & paging.P or (now ^ page.hidden_value) & paging.ADDR_MASK:
            return False        # present again, or another frame: the guest's now
        page.hidden_value = now
        return True

    def frame(self, vaddr: int) -> int | None:
        """Physical address of the hidden page holding VADDR (None if kmemgdb did not hide it,
        or the guest has remapped it since)."""
        page = self.pages.get(vaddr & ~(paging.PAGE_SIZE - 1))
        if page is None or read_u64(self.mem, page.pte_paddr) != page.hidden_value:
            return None
        return paging.present_again(page.hidden_value) & paging.ADDR_MASK

    def forget(self, vaddr: int) -> None:
        """Drop a page the guest has taken back (freed, remapped): it is no longer ours to show."""
        self.pages.pop(vaddr & ~(paging.PAGE_SIZE - 1), None)


class ThroughHidden:
    """Guest virtual memory as the host sees it, hidden pages included: what kmemcheck emulates
    instructions against (VMEM translates the direct map by arithmetic)."""

    def __init__(self, vmem: VirtualMemory, hidden: HiddenPages):
        self.vmem = vmem
        self.hidden = hidden

    def to_phys(self, vaddr: int) -> int:
        frame = self.hidden.frame(vaddr)
        if frame is not None:
            return frame + (vaddr & (paging.PAGE_SIZE - 1))
        return self.vmem.to_phys(vaddr)

    def _spans(self, vaddr: int, size: int):
        while size > 0:
            n = min(size, paging.PAGE_SIZE - (vaddr & (paging.PAGE_SIZE - 1)))
            yield self.to_phys(vaddr), n
            vaddr += n
            size -= n

    def read(self, vaddr: int, size: int) -> bytes:
        if (vaddr & (paging.PAGE_SIZE - 1)) + size <= paging.PAGE_SIZE:   # one page
            return self.vmem.phys.read(self.to_phys(vaddr), size)
        return b"".join(self.vmem.phys.read(paddr, n) for paddr, n in self._spans(vaddr, size))

    def write(self, vaddr: int, data: bytes) -> None:
        pos = 0
        for paddr, n in self._spans(vaddr, len(data)):
            self.vmem.phys.write(paddr, data[pos:pos + n])
            pos += n
