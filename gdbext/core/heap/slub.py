"""Walk SLUB from its own state: every slab page found through the struct page array, its
free objects from the slab's freelist and the owning CPU's lockless freelist (6.1 layout).

Free pointers may be hardened (CONFIG_SLAB_FREELIST_HARDENED): stored as
ptr ^ s->random ^ swab(address of the pointer). A freelist that leaves its slab, misses an
object boundary or loops is reported as a HeapError and its slab's objects are never reported.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernel import KernelModelError, container_entries
from .context import PAGE_SIZE, STRUCT_PAGE_SIZE, GuestContext
from .model import CacheInfo, HeapBuilder, HeapError, SlabGroup

# slab_flags_t bits (include/linux/slab.h, 6.1); macros are not in DWARF.
SLAB_NOLEAKTRACE = 0x00800000
DOUBLE_FREE, CORRUPTED = "double free", "corrupted freelist"
# kmemleak_scan_area(&va->rb_node, SIZE_MAX) in alloc_vmap_area() (mm/vmalloc.c, 6.1): a
# vmap_area's va_start/va_end are not references. Applied as a rule: a breakpoint there would
# stop the guest on every vmalloc.
SCAN_FROM_MEMBER = {"vmap_area": "vmap_area.rb_node"}


def swab64(x: int) -> int:
    return int.from_bytes(x.to_bytes(8, "little"), "big")


def read_cache(ctx: GuestContext, s: int) -> CacheInfo:
    """One struct kmem_cache * at S."""
    lay, mem = ctx.layout, ctx.vmem
    oo = mem.u32(s + lay.off("kmem_cache.oo"))
    hardened = lay.has_member("kmem_cache.random")
    return CacheInfo(
        address=s,
        name=mem.cstr(mem.u64(s + lay.off("kmem_cache.name")), 64),
        size=mem.u32(s + lay.off("kmem_cache.size")),
        object_size=mem.u32(s + lay.off("kmem_cache.object_size")),
        offset=mem.u32(s + lay.off("kmem_cache.offset")),
        inuse=mem.u32(s + lay.off("kmem_cache.inuse")),
        red_left_pad=mem.u32(s + lay.off("kmem_cache.red_left_pad")),
        flags=mem.u32(s + lay.off("kmem_cache.flags")),
        random=mem.u64(s + lay.off("kmem_cache.random")) if hardened else 0,
        objects_per_slab=oo & 0xFFFF,
        slab_bytes=PAGE_SIZE << (oo >> 16),
        ctor=mem.u64(s + lay.off("kmem_cache.ctor")) if lay.has_member("kmem_cache.ctor") else 0)


def read_caches(ctx: GuestContext) -> list[CacheInfo]:
    """Every struct kmem_cache on slab_caches."""
    return [read_cache(ctx, s) for s in container_entries(ctx.vmem, ctx.layout, "slab_caches",
                                                          "kmem_cache.list")]


class FreelistError(KernelModelError):
    """A SLUB freelist that leaves its slab, misses an object boundary or loops. OBJ: the
    object freed twice (a loop), or the free object whose free pointer is bad."""

    def __init__(self, message: str, kind: str, obj: int | None):
        super().__init__(message)
        self.kind, self.obj = kind, obj


def walk_freelist(ctx: GuestContext, cache: CacheInfo, base: int, objects: int, head: int):
    """Indices of the objects on the freelist starting at HEAD in the slab at BASE; raises
    FreelistError when the list leaves the slab, misses an object boundary or loops."""
    seen: set[int] = set()
    ptr, holder = head, None
    first = base + cache.red_left_pad
    while ptr:
        index, rem = divmod(ptr - first, cache.size)
        if rem or not 0 <= index < objects:
            raise FreelistError(f"free pointer {ptr:#x} is not an object of slab {base:#x}",
                                CORRUPTED, holder)
        if index in seen:
            raise FreelistError(f"freelist of slab {base:#x} loops at {ptr:#x}", DOUBLE_FREE, ptr)
        seen.add(index)
        holder = ptr
        yield index
        where = ptr + cache.offset
        raw = ctx.u64(where)
        ptr = raw ^ cache.random ^ swab64(where) if cache.random else raw


@dataclass(frozen=True)
class SlabRef:
    """The slab holding an address: its struct slab, first byte, object count and cache."""
    slab: int            # struct slab * (the head page's struct page)
    base: int            # direct-map address of the slab's first page
    objects: int
    cache: int           # struct kmem_cache *

    def index(self, cache: CacheInfo, addr: int) -> int | None:
        """Index of the object slot holding ADDR (None in the slab's tail or left red zone)."""
        index, rem = divmod(addr - self.base - cache.red_left_pad, cache.size)
        return index if 0 <= index < self.objects else None

    def object_start(self, cache: CacheInfo, index: int) -> int:
        return self.base + cache.red_left_pad + index * cache.size


def slab_at(ctx: GuestContext, vaddr: int) -> SlabRef | None:
    """The slab whose pages hold direct-map address VADDR, None when it is not a slab page."""
    paddr = ctx.direct_paddr(vaddr)
    if paddr is None:
        return None
    lay = ctx.layout
    page = ctx.vmemmap + (paddr // PAGE_SIZE) * STRUCT_PAGE_SIZE
    head = ctx.u64(page + 8)
    if head & 1:                                   # tail page: compound_head | 1
        page = head - 1
    flags = ctx.u64(page)
    if not flags & (1 << lay.const("PG_slab")):
        return None
    counters = ctx.u64(page + lay.off("slab.counters"))
    pfn = (page - ctx.vmemmap) // STRUCT_PAGE_SIZE
    return SlabRef(page, ctx.page_offset + pfn * PAGE_SIZE, (counters >> 16) & 0x7FFF,
                   ctx.u64(page + lay.off("slab.slab_cache")))


def free_indices(ctx: GuestContext, cache: CacheInfo, slab: SlabRef) -> set[int]:
    """Object indices of SLAB that SLUB has free now: its own freelist and the lockless
    freelist of every CPU whose current slab it is."""
    lay = ctx.layout
    heads = [ctx.u64(slab.slab + lay.off("slab.freelist"))]
    cpu_slab = ctx.u64(cache.address + lay.off("kmem_cache.cpu_slab"))
    for offset in ctx.cpu_offsets:
        c = (cpu_slab + offset) & (1 << 64) - 1
        if ctx.u64(c + lay.off("kmem_cache_cpu.slab")) == slab.slab:
            heads.append(ctx.u64(c + lay.off("kmem_cache_cpu.freelist")))
    free: set[int] = set()
    for head in heads:
        free.update(walk_freelist(ctx, cache, slab.base, slab.objects, head))
    return free


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
                    builder.errors.append(HeapError(base, f"cache {cache.name}: {error}",
                                                    error.kind, cache.name, error.obj))
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
                   live: np.ndarray) -> FreelistError | None:
        """Clear LIVE for every object on the freelist starting at HEAD; the error if the
        list is corrupted (an object on it twice, or on both freelists: a double free)."""
        try:
            for index in walk_freelist(self.ctx, cache, base, objects, head):
                if not live[index]:
                    obj = base + cache.red_left_pad + index * cache.size
                    return FreelistError(f"object {obj:#x} is on the freelists of slab "
                                         f"{base:#x} twice", DOUBLE_FREE, obj)
                live[index] = False
        except FreelistError as exc:
            return exc
        return None


def slabs_of(ctx: GuestContext, memmap: np.ndarray, caches: list[int]) -> list[SlabRef]:
    """Every slab whose cache is one of CACHES (struct kmem_cache * values)."""
    walker = SlubWalker(ctx, memmap)
    pfns = walker.slab_pfns()
    rows = memmap[pfns]
    mine = np.isin(rows[:, walker.w_cache], np.array(caches, np.uint64))
    out = []
    for pfn, row in zip(pfns[mine].tolist(), rows[mine].tolist()):
        out.append(SlabRef(ctx.vmemmap + pfn * STRUCT_PAGE_SIZE, walker.page_address(pfn),
                           (row[walker.w_counters] >> 16) & 0x7FFF, row[walker.w_cache]))
    return out


KERNFS_TYPE_MASK = 0x000F      # include/linux/kernfs.h, a macro


def rb_nodes(ctx: GuestContext, root: int) -> list[int]:
    """struct rb_node * of the tree whose first node is ROOT, in order."""
    lay, out, stack, node = ctx.layout, [], [], root
    left, right = lay.off("rb_node.rb_left"), lay.off("rb_node.rb_right")
    while (stack or node) and len(out) < 1 << 16:
        while node:
            stack.append(node)
            node = ctx.u64(node + left)
        node = stack.pop()
        out.append(node)
        node = ctx.u64(node + right)
    return out


def cache_aliases(ctx: GuestContext) -> dict[int, list[str]]:
    """struct kmem_cache * -> the other names SLUB merged into it. Only sysfs keeps them: each
    name is an entry of /sys/kernel/slab (kernfs), a link to the directory of the cache that
    serves it (mm/slub.c sysfs_slab_alias(); the directory's kobject is kmem_cache.kobj)."""
    lay = ctx.layout
    if not lay.has_sym("slab_kset"):
        return {}
    kset = ctx.u64(lay.sym("slab_kset"))
    directory = ctx.u64(kset + lay.off("kset.kobj.sd")) if kset else 0
    if not directory:
        return {}
    link = lay.const("KERNFS_LINK")
    out: dict[int, list[str]] = {}
    first = ctx.u64(directory + lay.off("kernfs_node.dir.children"))
    for rb in rb_nodes(ctx, first):
        kn = rb - lay.off("kernfs_node.rb")
        if ctx.vmem.u32(kn + lay.off("kernfs_node.flags")) & KERNFS_TYPE_MASK != link:
            continue
        target = ctx.u64(kn + lay.off("kernfs_node.symlink.target_kn"))
        kobj = ctx.u64(target + lay.off("kernfs_node.priv")) if target else 0
        if kobj:
            name = ctx.vmem.cstr(ctx.u64(kn + lay.off("kernfs_node.name")), 64)
            out.setdefault(kobj - lay.off("kmem_cache.kobj"), []).append(name)
    return out
