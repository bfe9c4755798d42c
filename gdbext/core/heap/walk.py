"""One heap snapshot: SLUB, large kmallocs and vmalloc areas, read while the guest is stopped."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernel import ModuleInfo
from .context import GuestContext
from .model import Heap, HeapBuilder
from .pages import add_large_kmallocs
from .slub import SlubWalker, read_caches
from .vmalloc import add_vmalloc_objects


@dataclass
class Snapshot:
    heap: Heap
    memmap: np.ndarray


def walk_heap(ctx: GuestContext, modules: list[ModuleInfo]) -> Snapshot:
    memmap = ctx.memmap()
    caches = read_caches(ctx)
    builder = HeapBuilder(caches)
    SlubWalker(ctx, memmap).walk(caches, builder)
    add_large_kmallocs(ctx, memmap, builder)
    init_off = ctx.layout.off("module.init_layout.base")
    cores = {m.base for m in modules}
    inits = {ctx.vmem.u64(m.address + init_off) for m in modules}
    add_vmalloc_objects(ctx, builder, cores, inits)
    return Snapshot(builder.build(), memmap)
