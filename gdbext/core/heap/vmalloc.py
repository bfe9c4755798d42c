"""vmalloc areas, walked from vmap_area_list (busy areas, sorted by address; mm/vmalloc.c 6.1).

Areas from vmalloc() are objects the way kmemleak_vmalloc() registers them: min_count 2 (the
vm_struct points at the area too) and surplus references to the vm_struct count for the area.
Module areas are not leak candidates: the core area is kmemleak_not_leak() and scanned only in
its writable part (kmemleak_load_module), the init area is kmemleak_ignore(). Per-CPU chunks are
vmalloc areas too: neither objects nor roots here, their allocated parts are per-CPU roots.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..kernel import container_entries
from .context import PAGE_SIZE, GuestContext
from .model import VMALLOC, Extra, HeapBuilder

# vm_struct.flags (include/linux/vmalloc.h, 6.1)
VM_ALLOC, VM_UNINITIALIZED, VM_NO_GUARD = 0x2, 0x20, 0x40
PERCPU_CALLERS = ("pcpu_get_vm_areas",)


@dataclass
class VmArea:
    vm_struct: int
    addr: int
    size: int           # without the guard page
    flags: int
    caller: int


def vm_areas(ctx: GuestContext) -> list[VmArea]:
    lay, mem = ctx.layout, ctx.vmem
    areas = []
    for va in container_entries(mem, lay, "vmap_area_list", "vmap_area.list"):
        vm = ctx.u64(va + lay.off("vmap_area.vm"))
        if not vm:
            continue
        flags = ctx.u64(vm + lay.off("vm_struct.flags"))
        size = ctx.u64(vm + lay.off("vm_struct.size"))
        if not flags & VM_NO_GUARD:
            size -= PAGE_SIZE
        areas.append(VmArea(vm, ctx.u64(vm + lay.off("vm_struct.addr")), size, flags,
                            ctx.u64(vm + lay.off("vm_struct.caller"))))
    return areas


def add_vmalloc_objects(ctx: GuestContext, builder: HeapBuilder, module_cores: set[int],
                        module_inits: set[int]) -> None:
    """Add vmalloc() areas as objects."""
    for area in vm_areas(ctx):
        if not area.flags & VM_ALLOC or area.flags & VM_UNINITIALIZED:
            continue
        if area.addr in module_cores or area.addr in module_inits:
            continue        # scanned as module roots / ignored, like kmemleak
        if (ctx.symbol_name(area.caller) or "") in PERCPU_CALLERS:
            continue
        builder.add_object(area.addr, area.size, VMALLOC, 2,
                           Extra(caller=area.caller, vm_struct=area.vm_struct))
