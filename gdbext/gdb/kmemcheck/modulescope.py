"""Module scope: the objects a module allocates, whatever helper it calls and cache it uses.

A breakpoint sits on each call instruction in the module's code that calls an allocation
helper (allocsites.HELPERS) or creates a cache, and on the instruction after it: two stops per
allocation. At the call: the arguments, the name the module gave the cache, a backtrace. At
the return: the object, whose region (slab, large kmalloc pages, vmalloc area) is hidden if it
was not, and whose lifetime starts with what the helper's contract put in it.

Hooks follow the guest's code, not the other way round: each stop checks that the bytes at the
hook are still the call it was set for, in text the module still has (init text is freed after
init, a module's text after rmmod, and a reloaded module may land at the same addresses). A
hook whose code is gone does nothing and is deleted at the next prompt; one at an address a
reloaded module calls from again is reused.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...core.allocsites import (CACHE_CREATORS, HELPERS, MEMDUP, MEMDUP_NUL, REALLOC,
                                STRDUP, STRING_LIMIT, STRNDUP, PendingCall, string_length)
from ...core.codescan import call_sites, call_target
from ...core.heap.context import PAGE_SIZE
from ...core.heap.slub import slab_at
from ...core.kernel import list_modules, module_text
from ...core.lifetimes import LARGE, VMALLOC, Region
from ..callsites import CALL_REGISTERS
from ..callstack import stack_backtrace
from ..modules import MODULES
from ..session import SESSION

MASK64 = (1 << 64) - 1
VMALLOC_SPAN = 32 << 40              # VMALLOC_SIZE_TB for 4-level paging (pgtable_64_types.h)


@dataclass
class Site:
    """A hooked address in a module's text: a call to a helper, or the return from one."""
    hook: object
    module: str | None               # None: its code is gone (disarmed)
    mod: int = 0                     # struct module * that owns the text
    init: bool = False               # in the init text, freed after the module's init


@dataclass
class CacheAlias:
    module: str
    name: str                        # the name the module gave kmem_cache_create()
    own: bool                        # SLUB kept it a cache of its own (not merged)


class ModuleScope:
    def __init__(self, armed):
        self.armed = armed
        self.engine = armed.engine
        self.ctx = armed.ctx
        table = SESSION.symbolizer().kernel
        self.helpers = {table.by_name[n].addr: h for n, h in HELPERS.items() if n in table.by_name}
        self.creators = {table.by_name[n].addr: where for n, where in CACHE_CREATORS.items()
                         if n in table.by_name}
        self.sites: dict[int, Site] = {}
        self.aliases: dict[int, CacheAlias] = {}         # struct kmem_cache * -> its creator
        self.creating: dict[int, tuple[int, str, str, int]] = {}  # rsp -> (site, module, name, ctor)
        MODULES.load_listeners.append(self.on_module_load)
        MODULES.unload_listeners.append(self.on_module_unload)
        self.follow_scope()

    def detach(self) -> None:
        for listeners, fn in ((MODULES.load_listeners, self.on_module_load),
                              (MODULES.unload_listeners, self.on_module_unload)):
            if fn in listeners:
                listeners.remove(fn)

    def own_cache(self, address: int) -> bool:
        alias = self.aliases.get(address)
        return alias is not None and alias.own

    # -- arming --------------------------------------------------------------------------------
    def arm_module(self, name: str, mod: int) -> int:
        """Hook each call the module's text makes to a helper or a cache creator, and the
        instruction after it. Returns the calls hooked."""
        calls = 0
        wanted = set(self.helpers) | set(self.creators)
        for base, size, init in module_text(self.ctx.vmem, self.ctx.layout, mod):
            code = self.ctx.vmem.read(base, size)
            for target_addr in wanted:
                for site in call_sites(code, base, target_addr):
                    for addr in (site, site + 5):
                        self._arm(addr, name, mod, init)
                    calls += 1
        return calls

    def _arm(self, addr: int, name: str, mod: int, init: bool) -> None:
        site = self.sites.get(addr)
        if site is not None and site.hook.is_valid():
            site.module, site.mod, site.init = name, mod, init
            return
        hook = self.armed.hook(f"*{addr:#x}", lambda: self.on_site(addr), "module call")
        self.sites[addr] = Site(hook, name, mod, init)

    def follow_scope(self) -> None:
        """Hook the loaded modules of the scope, unhook those no longer in it."""
        scope = self.armed.checker.scope.modules
        for mod in list_modules(self.ctx.vmem, self.ctx.layout):
            if mod.name in scope:
                self.arm_module(mod.name, mod.address)
        for name in {s.module for s in self.sites.values() if s.module} - scope:
            self.disarm_module(name)

    def disarm_module(self, name: str) -> None:
        for site in self.sites.values():
            if site.module == name:
                site.module = None
        self.aliases = {a: c for a, c in self.aliases.items() if c.module != name}

    def delete_disarmed(self) -> None:
        """At a prompt: delete hooks whose code is gone."""
        for addr, site in list(self.sites.items()):
            if site.module is None:
                if site.hook.is_valid():
                    site.hook.delete()
                self.armed.hooks.remove(site.hook)
                del self.sites[addr]

    def on_module_load(self, mod) -> None:
        self.engine.forget_code()
        if mod.name in self.armed.checker.scope.modules:
            self.arm_module(mod.name, mod.address)

    def on_module_unload(self, name: str) -> None:
        self.engine.forget_code()
        self.disarm_module(name)

    # -- the hook ----------------------------------------------------------------------------
    def _live(self, addr: int, site: Site) -> bool:
        if site.module is None:
            return False
        return not site.init or any(
            init and base <= addr < base + size
            for base, size, init in module_text(self.ctx.vmem, self.ctx.layout, site.mod))

    def on_site(self, addr: int) -> bool:
        site = self.sites.get(addr)
        if site is None or not self._live(addr, site):
            return False
        regs = CALL_REGISTERS.read()
        call = self.engine.calls.calls.get(regs["rsp"])
        if call is not None and call.site == addr - 5:
            self.engine.calls.leave(regs["rsp"])
            self.returned(call, regs["rax"])
        creating = self.creating.get(regs["rsp"])
        if creating is not None and creating[0] == addr - 5:
            del self.creating[regs["rsp"]]
            self.created(regs["rax"], *creating[1:])
        target_addr = call_target(self.ctx.vmem.read(addr, 5), addr)
        if target_addr in self.helpers:
            self.entered(self.helpers[target_addr], addr, regs)
        elif target_addr in self.creators:
            self.creating[regs["rsp"]] = (addr, site.module, self._cstr(regs["rdi"]),
                                          self._ctor(self.creators[target_addr], regs))
        return False

    def _cstr(self, addr: int) -> str:
        read = self.engine.memory.read
        return read(addr, string_length(read, addr, 64)).decode(errors="replace")

    def _ctor(self, where: str, regs: dict) -> int:
        return self.ctx.vmem.u64(regs["rsp"]) if where == "stack" else regs[where]

    def entered(self, helper, site: int, regs: dict) -> PendingCall:
        alias = self.aliases.get(regs[helper.cache]) if helper.cache else None
        return self.engine.calls.enter(helper, site, regs, copy_len=self._copy_len(helper, regs),
                                       backtrace=stack_backtrace(site + 5, regs["rsp"], self.engine.memory),
                                       name=alias.name if alias else "")

    def _copy_len(self, helper, regs: dict) -> int:
        """Bytes the helper copies from its source (its contract, mm/util.c, 6.1)."""
        if helper.copy in (MEMDUP, MEMDUP_NUL):
            return regs[helper.size]
        src = regs[helper.src] if helper.src else 0
        if src <= 16 or src >= -4095 & MASK64:           # NULL, ZERO_SIZE_PTR, ERR_PTR
            return 0
        read = self.engine.memory.read
        if helper.copy == STRDUP:
            return string_length(read, src, STRING_LIMIT) + 1
        if helper.copy == STRNDUP:
            return string_length(read, src, regs[helper.limit])
        if helper.copy == REALLOC:                          # ksize() of the old object
            region = self.engine.region_of(src)
            slot = region.slot(src) if region else None
            if slot is not None:
                return slot[1]
            slab = slab_at(self.ctx, src)
            return self.armed.slabs.cache(slab.cache).object_size if slab else 0
        return 0

    # -- returns ---------------------------------------------------------------------------------
    def returned(self, call: PendingCall, p: int) -> None:
        if p <= 16 or p >= -4095 & MASK64:
            self.engine.heap.settle_call(call.id, None)
            return
        region = self.engine.region_of(p)
        if region is not None and not all(map(self.armed.pages.owns, region.pages)):
            self.armed.slabs.forget(region)   # the guest took it back unseen (kfree of pages, vfree)
            region = None
        hidden = 0
        if region is None:
            region, hidden = self._track_container(p, call)
        if region is None:
            self.engine.heap.settle_call(call.id, None)
            return
        self.engine.returned(call, p, region)
        if hidden:
            self.armed.flush()

    def _track_container(self, p: int, call: PendingCall) -> tuple[Region | None, int]:
        """Track and hide what holds P: its slab, or the pages of a large kmalloc or a vmalloc
        area (sized from the request). Returns (region, pages hidden)."""
        ctx, slabs = self.ctx, self.armed.slabs
        slab = slab_at(ctx, p)
        if slab is not None:
            hidden = slabs.track(slab, slabs.cache(slab.cache), fresh=False)
            return self.engine.region_of(p), hidden
        size = call.requested
        if not size or p & (PAGE_SIZE - 1):
            return None, 0
        if ctx.direct_paddr(p) is not None:
            kind, label, size = LARGE, "large kmalloc", PAGE_SIZE << _order(size)
        elif ctx.vmalloc_base <= p < ctx.vmalloc_base + VMALLOC_SPAN:
            kind, label = VMALLOC, "vmalloc"
        else:
            return None, 0
        region = self.engine.heap.track_area(kind, p, size, label)
        hidden = slabs.hide(region)
        return (region if hidden else None), hidden

    def created(self, cache: int, module: str, name: str, ctor: int) -> None:
        """kmem_cache_create() returned CACHE for the module's NAME: SLUB may have merged it
        into a cache of another name. A cache of its own is tracked like the module's objects
        (it is the module's), constructor included."""
        if not cache:
            return
        info = self.armed.slabs.cache(cache)
        own = info.name == name
        self.aliases[cache] = CacheAlias(module, name, own)
        if own:
            self.armed.slabs.arm_ctor(info)


def _order(size: int) -> int:
    """get_order(): the power-of-two page count holding SIZE bytes."""
    return max(0, (size - 1).bit_length() - 12)

