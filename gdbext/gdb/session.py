"""Per-gdb state of kmemgdb: guest memory, kernel model, hidden pages. Built lazily, reset on
new symbols, and torn down (pages shown again) on detach, exit and gdb exit."""
from __future__ import annotations

import atexit
import os

import gdb

from ..core import paging
from ..core.hidden import HiddenPages
from ..core.kernel import KernelLayout, KernelModelError
from ..core.memory import RamFileMemory, below_4g_size
from ..core.symbols import SymbolTable, Symbolizer
from ..core.vmem import VirtualMemory
from . import settings, target
from .types import constant, member_offset, struct_size


class Session:
    def __init__(self):
        self._phys = None
        self._vmem: VirtualMemory | None = None
        self._layout: KernelLayout | None = None
        self._symbolizer: Symbolizer | None = None
        self._kernel_root: int | None = None
        self.hidden: HiddenPages | None = None

    # -- memory ------------------------------------------------------------------------
    def phys(self):
        if self._phys is None:
            path = settings.ram_file()
            if path:
                if not os.path.exists(path):
                    raise gdb.GdbError(f"kmemgdb: RAM file {path} does not exist "
                                       "(set kmemgdb ram-file to QEMU's mem-path)")
                mem = RamFileMemory(path)
                mem.low_size = below_4g_size(mem.size)
                self._phys = mem
            else:
                self._phys = target.StubPhysicalMemory()
            self.hidden = HiddenPages(self._phys, target.flush_tlb)
        return self._phys

    def ram_file_active(self) -> bool:
        return isinstance(self._phys, RamFileMemory)

    def reset_memory(self) -> None:
        self.show_all_pages()
        self._phys = None
        self._vmem = None
        self._kernel_root = None

    def kernel_root(self) -> int:
        """Physical address of init_top_pgt (x86-64's swapper_pg_dir), the kernel's own page
        table root. Kernel addresses map the same through every process's root, but a process's
        root dies with the process: a root taken from the vCPU's cr3 can turn into garbage
        while kmemgdb still uses it. Found once through the current cr3 (any root maps the
        kernel image; with PTI the kernel half of an 8 KiB pgd is the lower 4 KiB)."""
        if self._kernel_root is None:
            symbol = self.layout().sym("init_top_pgt")
            cr3 = target.register("cr3")
            for root in (cr3, cr3 & ~0x1000):
                try:
                    self._kernel_root = paging.translate(self.phys(), root, symbol).paddr
                    break
                except paging.PagingError:
                    continue
            else:
                raise KernelModelError(f"init_top_pgt ({symbol:#x}) is not mapped by cr3 {cr3:#x}")
        return self._kernel_root

    def vmem(self) -> VirtualMemory:
        """Kernel virtual memory through the kernel's page tables (translations checked
        against their leaf entry at each use)."""
        if self._vmem is None:
            self._vmem = VirtualMemory(self.phys(), self.kernel_root())
        return self._vmem


    def hidden_pages(self) -> HiddenPages:
        self.phys()
        assert self.hidden is not None
        return self.hidden

    def show_all_pages(self) -> int:
        """Show every page kmemgdb hid; safe to call at any time, also with no target."""
        if self.hidden is None:
            return 0
        return self.hidden.show_all()

    # -- kernel model ----------------------------------------------------------------------
    def vmlinux_path(self) -> str:
        objfiles = [o for o in gdb.objfiles() if o.filename and o.is_valid()]
        if not objfiles:
            raise gdb.GdbError("kmemgdb: no vmlinux loaded: start gdb with `gdb vmlinux` or use `file`")
        return objfiles[0].filename

    def layout(self) -> KernelLayout:
        if self._layout is None:
            table = self.symbolizer().kernel
            self._layout = KernelLayout({}, {}, lookup_offset=member_offset,
                                        lookup_symbol=lambda name: table.by_name[name].addr
                                        if name in table.by_name else None,
                                        lookup_size=struct_size, lookup_constant=constant)
        return self._layout

    def symbolizer(self) -> Symbolizer:
        if self._symbolizer is None:
            self._symbolizer = Symbolizer(SymbolTable.from_elf(self.vmlinux_path()))
        return self._symbolizer

    def forget_kernel(self) -> None:
        self._layout = None
        self._symbolizer = None

    # -- events ------------------------------------------------------------------------------
    def on_cont(self, _event) -> None:
        if self._vmem is not None:
            self._vmem.invalidate()

    def on_exit(self, _event=None) -> None:
        self.show_all_pages()
        self._vmem = None
        self._kernel_root = None


SESSION = Session()


def _on_new_objfile(event) -> None:
    # Module symbol files arrive as new objfiles too; only a new vmlinux changes the model.
    if SESSION._symbolizer is not None and event.new_objfile.filename == SESSION.vmlinux_path():
        SESSION.forget_kernel()


def register_events() -> None:
    gdb.events.cont.connect(SESSION.on_cont)
    gdb.events.exited.connect(SESSION.on_exit)
    gdb.events.new_objfile.connect(_on_new_objfile)
    atexit.register(SESSION.show_all_pages)
    # detach has no Python event in gdb 13: a hook runs before the command.
    gdb.execute("define hook-detach\nkmem pte show-all --quiet\nend", to_string=True)
    gdb.execute("define hook-disconnect\nkmem pte show-all --quiet\nend", to_string=True)
    gdb.execute("define hook-quit\nkmem pte show-all --quiet\nend", to_string=True)
