"""Slabs of tracked caches: hidden when made, shown when freed, watched while constructed.

New slabs are caught at the return of allocate_slab(), freed ones at __free_slab(): one stop
per slab, not per object. A cache with a constructor builds every object of a new slab before
allocate_slab() returns; to see what the constructor writes (and what it leaves unwritten), a
hook on the constructor itself hides the slab at its first object.
"""
from __future__ import annotations

from ...core.codescan import call_sites
from ...core.heap.context import PAGE_SIZE, STRUCT_PAGE_SIZE
from ...core.heap.model import CacheInfo
from ...core.heap.slub import SlabRef, read_cache, slab_at, slabs_of
from ...core.kernel import container_entries
from ...core.lifetimes import Region
from .. import target
from ..session import SESSION

SLAB_REGISTERS = target.RawRegisters(("rax", "rsi", "rdi"))


class Slabs:
    def __init__(self, armed):
        self.armed = armed
        self.engine = armed.engine
        self.ctx = armed.ctx
        self.ctor_hooks: dict[int, object] = {}
        table = SESSION.symbolizer().kernel
        armed.hook("__free_slab", self.on_free_slab)
        alloc = table.by_name["allocate_slab"]
        # (early_kmem_cache_node_alloc, the other caller, runs at boot only, and its page holds
        # __kmem_cache_free.)
        for caller in ("___slab_alloc",):
            sym = table.by_name.get(caller)
            if sym is None:
                continue
            for site in call_sites(self.ctx.vmem.read(sym.addr, sym.size), sym.addr, alloc.addr):
                armed.hook(f"*{site + 5:#x}", self.on_new_slab)

    def cache(self, address: int) -> CacheInfo:
        """struct kmem_cache * ADDRESS, read now (a destroyed cache's memory is reused)."""
        return read_cache(self.ctx, address)

    def tracked_caches(self) -> dict[int, CacheInfo]:
        out = {}
        for s in container_entries(self.ctx.vmem, self.ctx.layout, "slab_caches", "kmem_cache.list"):
            cache = self.cache(s)
            if self.armed.in_scope(cache):
                out[s] = cache
        return out

    def hide_caches(self, caches: dict[int, CacheInfo]) -> int:
        """Track and hide every existing slab of CACHES (at a prompt, not inside a hook)."""
        hidden = 0
        if caches:
            for slab in slabs_of(self.ctx, self.ctx.memmap(), list(caches)):
                hidden += self.track(slab, caches[slab.cache], fresh=False)
            target.flush_tlb_all()
        for cache in caches.values():
            self.arm_ctor(cache)
        return hidden

    def track(self, slab: SlabRef, cache: CacheInfo, fresh: bool, ctor_ran: bool = True) -> int:
        """Shadow a slab and hide its pages; returns the pages hidden (0 if it cannot be)."""
        region = self.engine.track_slab(slab, cache, fresh, ctor_ran)
        return self.hide(region)

    def hide(self, region: Region) -> int:
        """Hide REGION's pages; a region that cannot be hidden whole is not tracked at all."""
        done = []
        for page in region.pages:
            if not self.armed.pages.hide(page):
                for shown in done:
                    self.armed.pages.show(shown)
                self.engine.release(region)
                return 0
            done.append(page)
        return len(done)

    def release(self, region: Region) -> None:
        for page in self.engine.release(region):
            self.armed.pages.show(page)

    def forget(self, region: Region) -> None:
        """REGION's pages are the guest's again (freed, remapped): forget them, show nothing."""
        for page in self.engine.release(region):
            self.armed.pages.forget(page)

    def slab_base(self, slab_struct: int) -> int:
        """Direct-map address of the page whose struct page / struct slab is SLAB_STRUCT."""
        return self.ctx.page_offset + (slab_struct - self.ctx.vmemmap) // STRUCT_PAGE_SIZE * PAGE_SIZE

    # -- hooks -------------------------------------------------------------------------------
    def on_new_slab(self) -> bool:
        """The return of allocate_slab(): rax is the new struct slab *."""
        slab_struct = SLAB_REGISTERS.read()["rax"]
        if not slab_struct:
            return False
        base = self.slab_base(slab_struct)
        if self.engine.tracked_page(base):
            return False                 # its constructor's hook took it already
        cache = self.cache(self.ctx.u64(slab_struct + self.ctx.layout.off("slab.slab_cache")))
        if self.armed.in_scope(cache):
            slab = slab_at(self.ctx, base)
            if slab is not None and self.track(slab, cache, fresh=True):
                self.armed.flush()
        return False

    def on_free_slab(self) -> bool:
        """__free_slab(s, slab): the slab goes back to the page allocator: stop hiding and
        shadowing its pages."""
        region = self.engine.region_of(self.slab_base(SLAB_REGISTERS.read()["rsi"]))
        if region is not None:
            self.release(region)
        return False

    def arm_ctor(self, cache: CacheInfo) -> None:
        if cache.ctor and cache.ctor not in self.ctor_hooks:
            self.ctor_hooks[cache.ctor] = self.armed.hook(f"*{cache.ctor:#x}", self.on_ctor)

    def on_ctor(self) -> bool:
        """A constructor about to build an object (rdi): the first of a new slab hides it, so
        the constructor's writes are seen."""
        obj = SLAB_REGISTERS.read()["rdi"]
        if self.engine.tracked_page(obj):
            return False
        slab = slab_at(self.ctx, obj)
        if slab is None:
            return False
        cache = self.cache(slab.cache)
        if self.armed.in_scope(cache) and self.track(slab, cache, fresh=True, ctor_ran=False):
            self.armed.flush()
        return False
