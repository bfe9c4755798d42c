"""Walk SLUB from its own state: every slab page found through the struct page array, its
free objects from the slab's freelist and the owning CPU's lockless freelist (6.1 layout).

Free pointers may be hardened (CONFIG_SLAB_FREELIST_HARDENED): stored as
ptr ^ s->random ^ swab(address of the pointer). A freelist that leaves its slab, misses an
object boundary or loops is reported as a HeapError and its slab's objects are never reported.
"""
from __future__ import annotations

import numpy as np

from ..kernel import container_entries
from .context import PAGE_SIZE, STRUCT_PAGE_SIZE, GuestContext
from .model import CacheInfo, HeapBuilder, HeapError, SlabGroup

# slab_flags_t bits (include/linux/slab.h, 6.1); macros are not in DWARF.
SLAB_NOLEAKTRACE = 0x00800000
# kmemleak_scan_area(&va->rb_node, SIZE_MAX) in alloc_vmap_area() (mm/vmalloc.c, 6.1): a
# vmap_area's va_start/va_end are not references. Applied as a rule: a breakpoint there would
# stop the guest on every vmalloc.
SCAN_FROM_MEMBER = {"vmap_area": "vmap_area.rb_node"}


def swab64(x: int) -> int:
    return int.from_bytes(x.to_bytes(8, "little"), "big")


def read_caches(ctx: GuestContext) -> list[CacheInfo]:
    """Every struct kmem_cache on slab_caches."""
    lay, mem = ctx.layout, ctx.vmem
    hardened = lay.has_member("kmem_cache.random")
    caches = []
    for s in container_entries(mem, lay, "slab_caches", "kmem_cache.list"):
        oo = mem.u32(s + lay.off("kmem_cache.oo"))
        size = mem.u32(s + lay.off("kmem_cache.size"))
        caches.append(CacheInfo(
            address=s,
            name=mem.cstr(mem.u64(s + lay.off("kmem_cache.name")), 64),
            size=size,
            object_size=mem.u32(s + lay.off("kmem_cache.object_size")),
            offset=mem.u32(s + lay.off("kmem_cache.offset")),
            inuse=mem.u32(s + lay.off("kmem_cache.inuse")),
            red_left_pad=mem.u32(s + lay.off("kmem_cache.red_left_pad")),
            flags=mem.u32(s + lay.off("kmem_cache.flags")),
            random=mem.u64(s + lay.off("kmem_cache.random")) if hardened else 0,
            objects_per_slab=oo & 0xFFFF,
            slab_bytes=PAGE_SIZE << (oo >> 16)))
    return caches


class SlubWalker:
    def __init__(self, ctx: GuestContext, memmap: np.ndarray):
        self.ctx = ctx
        self.memmap = memmap
        lay = ctx.layout
        self.pg_slab = 1 << lay.const("PG_slab")
        self.w_cache = lay.off("slab.slab_cache") // 8
        self.w_freelist = lay.off("slab.freelist") // 8
        self.w_counters = lay.off("slab.counters") // 8

    def slab_pfns(self) -> np.ndarray:
        flags, head = self.memmap[:, 0], self.memmap[:, 1]
        is_slab = (flags & np.uint64(self.pg_slab)) != 0
        is_tail = (head & np.uint64(1)) != 0
        return np.nonzero(is_slab & ~is_tail)[0]

    def cpu_freelists(self, caches: list[CacheInfo]) -> dict[int, int]:
        """struct slab address -> head of the lockless per-CPU freelist that belongs to it."""
        lay, out = self.ctx.layout, {}
        off_fl, off_slab = lay.off("kmem_cache_cpu.freelist"), lay.off("kmem_cache_cpu.slab")
        for cache in caches:
            cpu_slab = self.ctx.vmem.u64(cache.address + lay.off("kmem_cache.cpu_slab"))
            for offset in self.ctx.cpu_offsets:
                c = (cpu_slab + offset) & (1 << 64) - 1
                slab, freelist = self.ctx.u64(c + off_slab), self.ctx.u64(c + off_fl)
                if slab and freelist:
                    out[slab] = freelist
        return out

    def walk(self, caches: list[CacheInfo], builder: HeapBuilder) -> None:
        by_addr = {c.address: c for c in caches}
        cpu_free = self.cpu_freelists(caches)
        pfns = self.slab_pfns()
        words = self.memmap[pfns]
        per_cache: dict[int, list[tuple[int, int, int, int]]] = {}
        for pfn, row in zip(pfns.tolist(), words.tolist()):
            cache_addr = row[self.w_cache]
            if cache_addr not in by_addr:
                builder.errors.append(HeapError(self.page_address(pfn),
                                                f"slab page's cache {cache_addr:#x} is not on slab_caches"))
                continue
            objects = (row[self.w_counters] >> 16) & 0x7FFF
            if not objects:
                continue
            per_cache.setdefault(cache_addr, []).append((pfn, row[self.w_freelist], objects,
                                                         self.ctx.vmemmap + pfn * STRUCT_PAGE_SIZE))
        for cache_addr, slabs in per_cache.items():
            cache = by_addr[cache_addr]
            if cache.flags & SLAB_NOLEAKTRACE:
                continue
            self._add_group(cache, slabs, cpu_free, builder)

    def page_address(self, pfn: int) -> int:
        return self.ctx.page_offset + pfn * PAGE_SIZE

    def _add_group(self, cache: CacheInfo, slabs, cpu_free: dict[int, int], builder: HeapBuilder) -> None:
        n = max(cache.objects_per_slab, max(s[2] for s in slabs))
        live = np.zeros((len(slabs), n), bool)
        bad: list[int] = []
        for i, (pfn, freelist, objects, slab_struct) in enumerate(slabs):
            live[i, :objects] = True
            base = self.page_address(pfn)
            for head in (freelist, cpu_free.get(slab_struct, 0)):
                error = self._mark_free(cache, base, objects, head, live[i])
                if error:
                    builder.errors.append(HeapError(base, f"cache {cache.name}: {error}"))
                    bad.append(i)
                    break
        scan_from = 0
        if cache.name in SCAN_FROM_MEMBER:
            scan_from = self.ctx.layout.off(SCAN_FROM_MEMBER[cache.name])
        pfns = np.array([s[0] for s in slabs], np.uint64)
        group = SlabGroup(cache, np.uint64(self.ctx.page_offset) + pfns * np.uint64(PAGE_SIZE),
                          pfns * np.uint64(PAGE_SIZE), live, scan_from)
        gi = builder.add_group(group)
        builder.untrusted += [(gi, i) for i in bad]

    def _mark_free(self, cache: CacheInfo, base: int, objects: int, head: int,
                   live: np.ndarray) -> str | None:
        """Clear LIVE for every object on the freelist starting at HEAD; an error text if the
        list is corrupted."""
        ptr, steps = head, 0
        first = base + cache.red_left_pad
        while ptr:
            index, rem = divmod(ptr - first, cache.size)
            if rem or not 0 <= index < objects:
                return f"free pointer {ptr:#x} is not an object of slab {base:#x}"
            if not live[index]:
                return f"freelist of slab {base:#x} loops at {ptr:#x}"
            live[index] = False
            steps += 1
            where = ptr + cache.offset
            raw = self.ctx.u64(where)
            ptr = raw ^ cache.random ^ swab64(where) if cache.random else raw
        return None
