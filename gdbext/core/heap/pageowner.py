"""Who allocated a page: the page allocator's own records (CONFIG_PAGE_OWNER, page_owner=on).

Each page has a struct page_owner inside its struct page_ext (mm/page_owner.c, 6.1: order,
gfp_mask, handle, ts_nsec, comm, pid, ...). page_ext entries are found through the page's
memory section (mm/page_ext.c lookup_page_ext(), SPARSEMEM): section->page_ext is biased so
that entry PFN sits at section->page_ext + PFN * page_ext_size.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .context import PAGE_SIZE, GuestContext
from .tracks import depot_stack

# The page allocator's own frames on top of a page_owner stack (its record is taken in
# post_alloc_hook(), inlined into get_page_from_freelist()): dropped, so a report starts where
# the allocation was asked for (__kmalloc_large_node, __vmalloc_node_range, ...).
PAGE_ALLOCATOR = ("get_page_from_freelist", "__alloc_pages", "alloc_pages", "__folio_alloc",
                  "prep_new_page", "post_alloc_hook")
# x86-64 SECTION_SIZE_BITS (arch/x86/include/asm/sparsemem.h, unchanged since 2.6): a macro,
# so not in DWARF.
PFN_SECTION_SHIFT = 27 - 12
PAGES_PER_SECTION = 1 << PFN_SECTION_SHIFT


@dataclass
class PageOwner:
    pid: int
    comm: str
    stack: list[int] = field(default_factory=list)


def page_owner_enabled(ctx: GuestContext) -> bool:
    """page_owner_inited is a static key the kernel enables when booted with page_owner=on."""
    lay = ctx.layout
    return lay.has_sym("page_owner_inited") and ctx.vmem.u32(lay.sym("page_owner_inited")) > 0


def page_ext(ctx: GuestContext, pfn: int) -> int | None:
    """struct page_ext * of PFN (CONFIG_SPARSEMEM_EXTREME: mem_section is an array of roots
    of PAGE_SIZE / sizeof(struct mem_section) sections each)."""
    lay, mem = ctx.layout, ctx.vmem
    per_root = PAGE_SIZE // lay.size("mem_section")
    nr = pfn >> PFN_SECTION_SHIFT
    root = mem.u64(mem.u64(lay.sym("mem_section")) + 8 * (nr // per_root))
    if not root:
        return None
    section = root + (nr % per_root) * lay.size("mem_section")
    base = mem.u64(section + lay.off("mem_section.page_ext"))
    if not base:
        return None
    return (base + pfn * mem.u64(lay.sym("page_ext_size"))) & (1 << 64) - 1


def page_owner(ctx: GuestContext, pfn: int) -> PageOwner | None:
    """The allocation record of the page at PFN (None when page_owner is off or never set)."""
    if not page_owner_enabled(ctx):
        return None
    ext = page_ext(ctx, pfn)
    if ext is None:
        return None
    lay, mem = ctx.layout, ctx.vmem
    owner = ext + mem.u64(lay.sym("page_owner_ops") + lay.off("page_ext_operations.offset"))
    handle = mem.u32(owner + lay.off("page_owner.handle"))
    if not handle:
        return None
    return PageOwner(mem.u32(owner + lay.off("page_owner.pid")),
                     mem.cstr(owner + lay.off("page_owner.comm"), 16), depot_stack(ctx, handle))


def requested_from(stack: list[int], name_of) -> list[int]:
    """STACK without the page allocator's frames on top (NAME_OF(pc): the function's name)."""
    i = 0
    while i < len(stack) - 1 and (name_of(stack[i]) or "").startswith(PAGE_ALLOCATOR):
        i += 1
    return stack[i:]


def task_names(ctx: GuestContext, pids: set[int]) -> dict[int, str]:
    """pid -> comm for PIDS, from the page_owner records of every page: each keeps the pid and
    name of the task that allocated it last, also after the page was freed, so tasks that have
    exited are still named (until all their pages went to someone else). A task's latest
    allocation names it: before its exec() it still bore its parent's name."""
    if not pids or not page_owner_enabled(ctx):
        return {}
    lay, mem = ctx.layout, ctx.vmem
    size = mem.u64(lay.sym("page_ext_size"))
    owner = mem.u64(lay.sym("page_owner_ops") + lay.off("page_ext_operations.offset"))
    pid_at, comm_at = owner + lay.off("page_owner.pid"), owner + lay.off("page_owner.comm")
    ts_at = owner + lay.off("page_owner.ts_nsec")
    wanted = np.array(sorted(pids), np.int32)
    latest: dict[int, tuple[int, str]] = {}
    for first in range(0, ctx.max_pfn, PAGES_PER_SECTION):
        ext = page_ext(ctx, first)
        if ext is None:
            continue
        count = min(PAGES_PER_SECTION, ctx.max_pfn - first)
        table = np.frombuffer(mem.read(ext, count * size), np.uint8).reshape(count, size)
        owners = table[:, pid_at:pid_at + 4].copy().view(np.int32)[:, 0]
        stamps = table[:, ts_at:ts_at + 8].copy().view(np.uint64)[:, 0]
        for row in np.nonzero(np.isin(owners, wanted))[0].tolist():
            pid, when = int(owners[row]), int(stamps[row])
            if pid not in latest or when > latest[pid][0]:
                comm = bytes(table[row, comm_at:comm_at + 16]).split(b"\0", 1)[0]
                latest[pid] = (when, comm.decode(errors="replace"))
    return {pid: comm for pid, (_, comm) in latest.items()}
