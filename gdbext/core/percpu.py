"""Allocated per-CPU memory, chunk by chunk (mm/percpu.c, 6.1).

kmemleak scans the static per-CPU section of every CPU and registers dynamic per-CPU
allocations as objects through kmemleak_alloc_percpu(). The host reads the allocator instead:
every chunk (first, reserved, and vmalloc-backed ones) has an allocation bitmap with one bit per
4-byte unit; the allocated runs, in every CPU's unit, are the per-CPU roots, next to the static
section of every CPU (section_roots). A chunk's hidden head and tail (start_offset, end_offset:
bytes of the page that belong to the static section or another chunk) are left out so nothing
is scanned twice. Freed per-CPU space (a module's, after rmmod) is not scanned, so objects only
a dead module's per-CPU variable pointed to are leaks.
"""
from __future__ import annotations

import numpy as np

from .heap.context import PAGE_SIZE, GuestContext
from .kernel import list_for_each
from .leaks import Root

PCPU_MIN_ALLOC_SIZE = 4


def chunks(ctx: GuestContext) -> list[int]:
    """struct pcpu_chunk * of every chunk: the reserved one and those on pcpu_chunk_lists."""
    lay = ctx.layout
    found: list[int] = []
    reserved = ctx.u64(lay.sym("pcpu_reserved_chunk"))
    if reserved:
        found.append(reserved)
    lists = ctx.u64(lay.sym("pcpu_chunk_lists"))
    slots = ctx.vmem.u32(lay.sym("pcpu_nr_slots"))
    link = lay.off("pcpu_chunk.list")
    for slot in range(slots):
        for node in list_for_each(ctx.vmem, lists + 16 * slot):
            if node - link not in found:
                found.append(node - link)
    return found


def allocated_runs(alloc_map: np.ndarray, bits: int) -> list[tuple[int, int]]:
    """(start, end) byte offsets of the allocated runs of a chunk's bitmap."""
    used = np.unpackbits(alloc_map.view(np.uint8), bitorder="little")[:bits].astype(np.int8)
    edges = np.diff(np.concatenate([[0], used, [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    # Rounded out to whole 8-byte words: pointers are 8-byte aligned, units are 4 bytes.
    return [(s * PCPU_MIN_ALLOC_SIZE & ~7, (e * PCPU_MIN_ALLOC_SIZE + 7) & ~7)
            for s, e in zip(starts.tolist(), ends.tolist())]


def percpu_roots(ctx: GuestContext) -> list[Root]:
    lay = ctx.layout
    unit_offsets = ctx.u64(lay.sym("pcpu_unit_offsets"))
    offsets = [ctx.u64(unit_offsets + 8 * cpu) for cpu in range(len(ctx.cpu_offsets))]
    roots = []
    for chunk in chunks(ctx):
        base = ctx.u64(chunk + lay.off("pcpu_chunk.base_addr"))
        nr_pages = ctx.vmem.u32(chunk + lay.off("pcpu_chunk.nr_pages"))
        bits = nr_pages * PAGE_SIZE // PCPU_MIN_ALLOC_SIZE
        bitmap = ctx.u64(chunk + lay.off("pcpu_chunk.alloc_map"))
        words = np.frombuffer(ctx.vmem.read(bitmap, (bits + 63) // 64 * 8), np.uint64)
        lo = _s32(ctx.vmem.u32(chunk + lay.off("pcpu_chunk.start_offset")))
        hi = nr_pages * PAGE_SIZE - _s32(ctx.vmem.u32(chunk + lay.off("pcpu_chunk.end_offset")))
        for start, end in allocated_runs(words, bits):
            start, end = max(start, (lo + 7) & ~7), min(end, hi & ~7)
            if start >= end:
                continue
            for cpu, unit in enumerate(offsets):
                roots.append(Root(f"per-CPU data of CPU {cpu}", base + unit + start, end - start))
    return roots


def _s32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def first_chunk_area(ctx: GuestContext) -> tuple[int, int]:
    """[start, end) of the first chunk's units in the direct map (memblock memory that the
    boot-time roots must leave to percpu_roots())."""
    lay = ctx.layout
    base = ctx.u64(lay.sym("pcpu_base_addr"))
    size = ctx.vmem.u32(lay.sym("pcpu_unit_size")) * ctx.vmem.u32(lay.sym("pcpu_nr_units"))
    return base, base + size
