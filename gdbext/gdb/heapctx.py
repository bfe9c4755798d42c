"""Build the pure GuestContext for heap walks and scans from the gdb session."""
from __future__ import annotations

import gdb
import numpy as np

from ..core.heap.context import GuestContext
from ..core.kernel import read_bases
from .session import SESSION
from . import target

GENERAL_REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                     "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


def guest_context() -> GuestContext:
    vmem = SESSION.vmem()
    layout = SESSION.layout()
    phys = SESSION.phys()
    bases = read_bases(vmem, layout)
    nr_cpus = vmem.u32(layout.sym("nr_cpu_ids"))
    offsets_addr = layout.sym("__per_cpu_offset")
    cpu_offsets = [vmem.u64(offsets_addr + 8 * cpu) for cpu in range(nr_cpus)]
    ram = np.frombuffer(phys.view(), np.uint8) if SESSION.ram_file_active() else None
    symbolizer = SESSION.symbolizer()

    def symbol_name(addr: int) -> str | None:
        located = symbolizer.lookup(addr)
        return located.symbol.name if located else None

    return GuestContext(phys, vmem, layout, bases["page_offset_base"][0],
                        bases["vmemmap_base"][0], vmem.u64(layout.sym("max_pfn")), cpu_offsets,
                        symbol_name, ram, bases["vmalloc_base"][0])


def vcpu_registers() -> list[int]:
    """General registers of every vCPU (gdb thread), as possible pointers."""
    values = []
    selected = gdb.selected_thread()
    try:
        for thread in gdb.selected_inferior().threads():
            thread.switch()
            frame = gdb.newest_frame()
            values += [int(frame.read_register(r)) & target.MASK64 for r in GENERAL_REGISTERS]
    finally:
        if selected is not None:
            selected.switch()
    return values
