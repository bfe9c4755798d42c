"""Allocation records of SLUB user tracking (slub_debug=U): struct track and the stack depot.

6.1 layout: the two struct track (alloc, free) follow the object's metadata at get_info_end();
track.handle is a depot_stack_handle_t whose bits are slabindex:16, offset:10, valid:1
(lib/stackdepot.c, STACK_ALLOC_ALIGN 4), naming a struct stack_record in stack_slabs[].
"""
from __future__ import annotations

from .context import GuestContext
from .model import CacheInfo, Track

SLAB_STORE_USER = 0x00010000
DEPOT_INDEX_BITS, DEPOT_OFFSET_BITS, DEPOT_ALIGN = 16, 10, 4
MAX_FRAMES = 64
ALLOC, FREE = 0, 1                 # enum track_item


def tracks_enabled(cache: CacheInfo) -> bool:
    return bool(cache.flags & SLAB_STORE_USER)


def info_end(cache: CacheInfo) -> int:
    """get_info_end(): the free pointer sits after the object when offset >= inuse."""
    return cache.inuse + (8 if cache.offset >= cache.inuse else 0)


def read_track(ctx: GuestContext, cache: CacheInfo, obj: int, which: int = 0) -> Track | None:
    """Track WHICH (ALLOC or FREE: enum track_item) of the object at OBJ; None when the cache
    keeps none or the object never had that event."""
    if not tracks_enabled(cache):
        return None
    lay = ctx.layout
    t = obj + info_end(cache) + which * lay.size("track")
    raw = ctx.read(t, lay.off("track.when") + 8)
    u32 = lambda off: int.from_bytes(raw[off:off + 4], "little")
    u64 = lambda off: int.from_bytes(raw[off:off + 8], "little")
    addr = u64(lay.off("track.addr"))
    if not addr:
        return None
    handle = u32(lay.off("track.handle"))
    return Track(addr, u32(lay.off("track.pid")), u32(lay.off("track.cpu")),
                 u64(lay.off("track.when")), depot_stack(ctx, handle))


def depot_stack(ctx: GuestContext, handle: int) -> list[int]:
    """Return addresses of the stack recorded under HANDLE, innermost first ([] if none)."""
    if not handle or not (handle >> (DEPOT_INDEX_BITS + DEPOT_OFFSET_BITS)) & 1:
        return []
    lay = ctx.layout
    index = handle & ((1 << DEPOT_INDEX_BITS) - 1)
    offset = (handle >> DEPOT_INDEX_BITS) & ((1 << DEPOT_OFFSET_BITS) - 1)
    slab = ctx.u64(lay.sym("stack_slabs") + 8 * index)
    if not slab:
        return []
    record = slab + (offset << DEPOT_ALIGN)
    size = min(ctx.vmem.u32(record + lay.off("stack_record.size")), MAX_FRAMES)
    raw = ctx.vmem.read(record + lay.off("stack_record.entries"), 8 * size)
    return [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]
