"""Large kmalloc allocations: compound pages the page allocator handed to kmalloc_large().

6.1 marks them no differently from other compound pages, so they are recognised by elimination:
a compound head that is not a slab, not on an LRU list, not reserved, has no mapping, is in use,
and whose first tail page carries COMPOUND_PAGE_DTOR. In the guests kmemgdb builds (no THP, no
networking page fragments) that leaves kmalloc_large() and kvmalloc()'s large path.
"""
from __future__ import annotations

import numpy as np

from .context import PAGE_SIZE, GuestContext
from .model import LARGE, HeapBuilder

COMPOUND_PAGE_DTOR = 1      # enum compound_dtor_id (include/linux/mm.h, 6.1)


def add_large_kmallocs(ctx: GuestContext, memmap: np.ndarray, builder: HeapBuilder) -> None:
    lay = ctx.layout
    bit = lambda name: np.uint64(1 << lay.const(name))
    flags, head = memmap[:, 0], memmap[:, 1]
    w_mapping = lay.off("page.mapping") // 8
    refcount_word, refcount_shift = divmod(lay.off("page._refcount"), 8)
    refcount = (memmap[:, refcount_word] >> np.uint64(refcount_shift * 8)) & np.uint64(0xFFFFFFFF)
    candidate = (((flags & bit("PG_head")) != 0) & ((flags & bit("PG_slab")) == 0)
                 & ((flags & bit("PG_lru")) == 0) & ((flags & bit("PG_reserved")) == 0)
                 & (memmap[:, w_mapping] == 0) & (refcount != 0) & ((head & np.uint64(1)) == 0))
    dtor_word, dtor_byte = divmod(lay.off("page.compound_dtor"), 8)
    order_word, order_byte = divmod(lay.off("page.compound_order"), 8)
    for pfn in np.nonzero(candidate)[0].tolist():
        if pfn + 1 >= len(memmap):
            continue
        tail = memmap[pfn + 1]
        dtor = (int(tail[dtor_word]) >> (8 * dtor_byte)) & 0xFF
        order = (int(tail[order_word]) >> (8 * order_byte)) & 0xFF
        if dtor == COMPOUND_PAGE_DTOR and order >= 1:
            builder.add_object(ctx.page_offset + pfn * PAGE_SIZE, PAGE_SIZE << order, LARGE)
