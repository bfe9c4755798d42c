"""Host-side kmemcheck in gdb: the page-fault hook, the slab hooks, and page hiding.

One silent breakpoint sits at spurious_kernel_fault(), the first thing the kernel calls for a
fault on a kernel address (arch/x86/mm/fault.c, 6.1), so user-space page faults never stop the
guest. For a fault on a page kmemcheck hid, the faulting context is read from the struct pt_regs
the entry code saved, the instruction is completed on the host by editing that pt_regs in guest
RAM, and spurious_kernel_fault is made to return 1 by moving rip to a `mov eax,1; ret` in kernel
text: the kernel's own exception exit then resumes the interrupted code after the instruction.
One guest stop and one register write per tracked access.

Instructions the host cannot emulate are single-stepped by the guest itself: the page is shown,
TF is set in the saved flags, and the #DB that follows the instruction is caught at
exc_debug(), where the page is hidden again and the trap undone in the saved flags.

Hook sites are chosen away from hot code: QEMU runs every instruction of a 4 KiB page holding a
breakpoint as its own translation block, so a hook on the syscall entry page (asm_exc_debug) or
on kfree's page would slow down the whole guest.
"""
from __future__ import annotations

import fnmatch
import os

import gdb

from ..core import paging, ptregs
from ..core.codescan import RETURN_ONE, call_sites, find_bytes
from ..core.heap.context import PAGE_SIZE, STRUCT_PAGE_SIZE, GuestContext
from ..core.heap.slub import SlabRef, read_cache, slab_at, slabs_of
from ..core.heap.tracks import read_alloc_track
from ..core.hidden import ThroughHidden
from ..core.inflight import STACK_BYTES, FaultPath
from ..core.memory import MemoryError_
from ..core.kmemcheck import Engine, Finding, KmemcheckError, Options, Scope
from ..core.kmemcheck_report import render_finding
from ..core.render import Painter
from . import settings, target
from ..core.kernel import container_entries, list_modules
from .heapctx import guest_context
from .hooks import SilentHook
from .modules import MODULES
from .session import SESSION

MASK64 = (1 << 64) - 1
# KMEMGDB_KMEMCHECK_TRACE=FILE logs every tracked access (debugging kmemgdb itself).
TRACE = open(os.environ["KMEMGDB_KMEMCHECK_TRACE"], "w") if os.environ.get("KMEMGDB_KMEMCHECK_TRACE") else None
TF = 1 << 8
FAULT_REGISTERS = target.RawRegisters(("rsi", "rsp", "fs_base", "gs_base"))
CALL_REGISTERS = target.RawRegisters(("rax", "rsi", "rdi", "rdx", "rsp"))
# Steps allowed to bring a vCPU from inside the page-fault entry to the fault hook (about 100
# instructions are needed; the bound keeps a wrong guess from stepping for long).
MAX_DRAIN_STEPS = 1000
FAULT_PATH_FUNCTIONS = ("asm_exc_page_fault", "error_entry", "exc_page_fault")
GFP_ZERO = 0x100                     # ___GFP_ZERO (include/linux/gfp_types.h, 6.1)
# Allocation entry points a module's code calls (6.1, include/linux/slab.h) and the register
# holding their gfp_t argument; None: the object comes back initialized (kmemdup copies).
MODULE_ALLOCATORS = {
    "kmem_cache_alloc": "rsi",          # (struct kmem_cache *, gfp_t)
    "kmem_cache_alloc_lru": "rdx",      # (struct kmem_cache *, struct list_lru *, gfp_t)
    "kmem_cache_alloc_node": "rsi",     # (struct kmem_cache *, gfp_t, int)
    "kmalloc_trace": "rsi",             # (struct kmem_cache *, gfp_t, size_t): kmalloc(CONST)
    "kmalloc_node_trace": "rsi",        # (struct kmem_cache *, gfp_t, int, size_t)
    "__kmalloc": "rsi",                 # (size_t, gfp_t)
    "__kmalloc_node": "rsi",            # (size_t, gfp_t, int)
    "kmemdup": None,                    # (const void *, size_t, gfp_t)
}
ALLOCATOR_FILES = ("mm/slub.c", "mm/slab_common.c")
# SLUB reads free pointers through copy_from_kernel_nofault() when debug_pagealloc is on.
ALLOCATOR_FUNCTIONS = {"copy_from_kernel_nofault"}


def _Hook(spec: str, action) -> SilentHook:
    return SilentHook(spec, action, "kmemcheck", KMEMCHECK.finish_interrupted)


class Commit:
    """The guest changes of one hook, applied in order and resumable: a Ctrl-C that interrupts
    them is answered by running the rest."""

    def __init__(self, steps, stop: int):
        self.steps = steps
        self.stop = stop             # the hook stop it belongs to
        self.done = 0

    def run(self) -> None:
        while self.done < len(self.steps):
            self.steps[self.done]()
            self.done += 1


class Suppression:
    """`kmemcheck suppress site=GLOB | cache=GLOB | field=struct.field`."""

    def __init__(self, text: str):
        key, sep, value = text.partition("=")
        if not sep or key not in ("site", "cache", "field") or not value:
            raise KmemcheckError(f"bad suppression {text!r}: use site=FUNCTION-GLOB, cache=GLOB "
                                 "or field=STRUCT.FIELD")
        self.key, self.value, self.text = key, value, text

    def matches(self, f: Finding) -> bool:
        d = f.details
        if self.key == "cache":
            return f.object is not None and fnmatch.fnmatchcase(f.object.cache, self.value)
        if self.key == "site":
            frames = d.get("origin_backtrace") or []
            return any(fr.symbol and fnmatch.fnmatchcase(fr.symbol.split("+")[0], self.value)
                       for fr in frames)
        field = d.get("field")
        if not field:
            return False
        path = field["path"].removeprefix("struct ").removeprefix("union ")
        return fnmatch.fnmatchcase(path, self.value)


class Kmemcheck:
    def __init__(self):
        self.mode = 0
        self.scope = Scope()
        self.options = Options()
        self.suppressions: list[Suppression] = []
        self.engine: Engine | None = None
        self.ctx: GuestContext | None = None
        self.hooks: list[gdb.Breakpoint] = []
        self.pages: set[int] = set()          # pages this checker hid
        self.gadget = 0
        self.regs_offset: int | None = None   # pt_regs - rsp at spurious_kernel_fault
        self.stepping: tuple[int, int] | None = None    # page shown for a step, saved rflags
        self.commit: Commit | None = None
        self.caches: dict[int, object] = {}
        self.module_hooks: dict[str, list[gdb.Breakpoint]] = {}
        self.dead_hooks: list[gdb.Breakpoint] = []
        self.pending_allocs: dict[int, int | None] = {}    # rsp at the call -> gfp flags
        self.cleanup_pending = False
        self.last_engine: Engine | None = None
        self.hook_addresses: dict[int, int] = {}
        self._always_inserted = None
        self.fault_path: FaultPath | None = None
        self.faults_handled = 0

    # -- on / off ------------------------------------------------------------------------------
    def enable(self, mode: int) -> int:
        """Turn the checker on (1) or on in one-shot mode (2); returns the pages hidden."""
        if self.scope.empty:
            raise KmemcheckError("nothing is tracked: `kmemcheck track cache NAME` (or module NAME, "
                                 "all) first")
        self.options.one_shot = mode == 2
        if self.engine is not None:
            self.mode = mode
            return 0
        self.ctx = ctx = guest_context()
        self._check_small_pages(ctx)
        self.gadget = self._find_gadget(ctx)
        memory = ThroughHidden(ctx.vmem, SESSION.hidden_pages(), ctx.page_offset,
                               ctx.max_pfn * PAGE_SIZE)
        self.engine = Engine(ctx, memory, self.options, self._is_allocator, self._keep,
                             self._read_track, lambda cache: self.scope.tracks_cache(cache.name))
        self.mode = mode
        try:
            self._install_hooks(ctx)
            hidden = self._track_existing(ctx)
        except BaseException:
            self.disable()
            raise
        return hidden

    def disable(self) -> int:
        """Turn off: every page kmemcheck hid is shown again; the guest keeps running."""
        self._drain_in_flight()
        shown = self._show_pages()
        for hook in self.hooks + self.dead_hooks + [h for hs in self.module_hooks.values() for h in hs]:
            if hook.is_valid():
                hook.delete()
        self.hooks, self.dead_hooks, self.module_hooks = [], [], {}
        self.pending_allocs.clear()
        for listeners, fn in ((MODULES.load_listeners, self.on_module_load),
                              (MODULES.unload_listeners, self.on_module_unload)):
            if fn in listeners:
                listeners.remove(fn)
        if self._always_inserted is not None:
            gdb.execute(f"set breakpoint always-inserted {self._always_inserted}", to_string=True)
            self._always_inserted = None
        self.mode = 0
        self.cleanup_pending = False
        self.stepping = None
        if self.engine is not None:
            self.last_engine = self.engine
        self.engine = None
        return shown

    def _drain_in_flight(self) -> None:
        """Before pages are shown at a stop (not inside a hook): a vCPU stopped between a fault
        on a hidden page and the fault hook would take it to the kernel as a not-present fault,
        which the kernel never calls spurious (an oops). Step such vCPUs through the hook."""
        if self.engine is None or not self.pages or self.fault_path is None:
            return
        selected = gdb.selected_thread()
        try:
            for thread in gdb.selected_inferior().threads():
                thread.switch()
                if self._fault_in_flight():
                    self._drain_vcpu()
        except gdb.error as exc:          # no registers: the guest is gone or not stopped
            gdb.write(f"kmemcheck: could not check the vCPUs for a fault in flight: {exc}\n")
        finally:
            if selected is not None and selected.is_valid():
                selected.switch()

    def _drain_vcpu(self) -> None:
        """Step this vCPU, alone, until kmemcheck's fault hook has handled its fault."""
        hook = self.hook_addresses.get(self.hooks[0].number) if self.hooks else None
        locking = gdb.parameter("scheduler-locking")
        gdb.execute("set scheduler-locking on", to_string=True)
        try:
            for _ in range(MAX_DRAIN_STEPS):
                handled = self.faults_handled
                gdb.execute("stepi", to_string=True)
                if self.faults_handled != handled:
                    return                # gdb ran the hook on the stepped-onto breakpoint
                if target.register("rip") == hook:
                    self.on_fault()
                    return
                if not self._fault_in_flight():
                    return
        finally:
            gdb.execute(f"set scheduler-locking {locking}", to_string=True)
        gdb.write(f"kmemcheck: a vCPU stayed in the page-fault entry for {MAX_DRAIN_STEPS} steps\n")

    def _fault_in_flight(self) -> bool:
        """This vCPU's last fault hit a hidden page and it is on the way to the hook."""
        cr2 = target.register("cr2")
        if (cr2 & ~(PAGE_SIZE - 1)) not in self.pages:
            return False
        return self.fault_path.may_be_in_flight(target.register("rip"),
                                                self._stack(target.register("rsp")))

    def _stack(self, rsp: int) -> bytes:
        """Up to STACK_BYTES at RSP, ending early at an unmapped page (the stack's top guard)."""
        out = b""
        while len(out) < STACK_BYTES:
            addr = rsp + len(out)
            n = min(STACK_BYTES - len(out), PAGE_SIZE - (addr & (PAGE_SIZE - 1)))
            try:
                out += self.engine.memory.read(addr, n)
            except (paging.PagingError, MemoryError_):
                break
        return out

    def _show_pages(self) -> int:
        hidden = SESSION.hidden
        count = 0
        if hidden is not None:
            for page in list(self.pages):
                if hidden.show(page):
                    count += 1
        self.pages.clear()
        return count

    def _check_small_pages(self, ctx: GuestContext) -> None:
        """Hiding needs a 4 KiB direct map: debug_pagealloc=on gives one."""
        probe = ctx.page_offset + (ctx.max_pfn // 2) * PAGE_SIZE
        try:
            paging.find_pte(ctx.phys, target.register("cr3"), probe)
        except paging.LargePage:
            raise KmemcheckError("the guest's direct map uses 2 MiB pages, so single heap pages "
                                 "cannot be hidden: boot it with debug_pagealloc=on") from None
        except paging.NotMapped:
            pass           # a free page unmapped by debug_pagealloc: 4 KiB mapped, as wanted

    def _find_gadget(self, ctx: GuestContext) -> int:
        start = ctx.layout.sym("_stext")
        code = ctx.vmem.read(start, 1 << 20)
        gadget = find_bytes(code, start, RETURN_ONE)
        if gadget is None:
            raise KmemcheckError("no `mov eax,1; ret` in the first MiB of kernel text")
        return gadget

    def _install_hooks(self, ctx: GuestContext) -> None:
        self._always_inserted = gdb.parameter("breakpoint always-inserted")
        self._always_inserted = "on" if self._always_inserted is True else "off"
        # Saves the remove/insert packets around every stop.
        gdb.execute("set breakpoint always-inserted on", to_string=True)
        self.hooks.append(_Hook("spurious_kernel_fault", self.on_fault))
        self.hooks.append(_Hook("exc_debug", self.on_debug_trap))
        table = SESSION.symbolizer().kernel
        path = [table.by_name[name] for name in FAULT_PATH_FUNCTIONS if name in table.by_name]
        self.fault_path = FaultPath(tuple((sym.addr, sym.addr + sym.size) for sym in path))
        self.hook_addresses = {hook.number: table.by_name[name].addr for hook, name in
                               zip(self.hooks, ("spurious_kernel_fault", "exc_debug"))}
        self.hooks.append(_Hook("__free_slab", self.on_free_slab))
        alloc = table.by_name["allocate_slab"]
        # (early_kmem_cache_node_alloc, the other caller, runs at boot only, and its page holds
        # __kmem_cache_free.)
        for caller in ("___slab_alloc",):
            sym = table.by_name.get(caller)
            if sym is None:
                continue
            for site in call_sites(ctx.vmem.read(sym.addr, sym.size), sym.addr, alloc.addr):
                self.hooks.append(_Hook(f"*{site + 5:#x}", self.on_new_slab))
        MODULES.load_listeners.append(self.on_module_load)
        MODULES.unload_listeners.append(self.on_module_unload)
        self._hook_scoped_modules()

    def _track_existing(self, ctx: GuestContext) -> int:
        return self._hide_caches(ctx, self._tracked_caches(ctx))

    def _hide_caches(self, ctx: GuestContext, caches: dict) -> int:
        if not caches:
            return 0
        hidden = 0
        cr3 = target.register("cr3")
        for slab in slabs_of(ctx, ctx.memmap(), list(caches)):
            hidden += self._hide_slab(slab, caches[slab.cache], cr3, fresh=False)
        target.flush_tlb_all()
        return hidden

    # -- module scope: the module's own calls to the allocator ------------------------------
    def _module_text(self, mod: int) -> list[tuple[int, int]]:
        """(start, size) of the core and init text of struct module * MOD (6.1 layouts)."""
        lay, mem = self.ctx.layout, self.ctx.vmem
        out = []
        for part in ("core_layout", "init_layout"):
            base = mem.u64(mod + lay.off(f"module.{part}.base"))
            size = mem.u32(mod + lay.off(f"module.{part}.text_size"))
            if base and size:
                out.append((base, size))
        return out

    def _hook_module(self, name: str, texts: list[tuple[int, int]]) -> int:
        """A breakpoint on each call the module makes to an allocation function (reads the
        gfp flags) and one after it (gets the object): two stops per module allocation."""
        table = SESSION.symbolizer().kernel
        hooks = self.module_hooks.setdefault(name, [])
        for base, size in texts:
            code = self.ctx.vmem.read(base, size)
            for function, reg in MODULE_ALLOCATORS.items():
                sym = table.by_name.get(function)
                if sym is None:
                    continue
                for site in call_sites(code, base, sym.addr):
                    hooks.append(_Hook(f"*{site:#x}", lambda reg=reg: self.on_module_call(reg)))
                    hooks.append(_Hook(f"*{site + 5:#x}", self.on_module_alloc))
        return len(hooks) // 2

    def _hook_scoped_modules(self) -> None:
        """Hook the loaded modules of the scope that are not hooked yet."""
        for mod in list_modules(self.ctx.vmem, self.ctx.layout):
            if mod.name in self.scope.modules and mod.name not in self.module_hooks:
                self._hook_module(mod.name, self._module_text(mod.address))

    def on_module_load(self, mod: gdb.Value) -> None:
        name = mod["name"].string()
        if self.engine is not None and name in self.scope.modules:
            self._hook_module(name, self._module_text(int(mod.address)))

    def on_module_unload(self, name: str) -> None:
        """Its text goes away: its hooks stop acting now and are deleted at the next prompt."""
        self.dead_hooks += self.module_hooks.pop(name, [])

    def on_module_call(self, reg: str | None) -> bool:
        if self.engine is None:
            return False
        regs = CALL_REGISTERS.read()
        self.pending_allocs[regs["rsp"]] = None if reg is None else regs[reg]
        return False

    def on_module_alloc(self) -> bool:
        if self.engine is None:
            return False
        regs = CALL_REGISTERS.read()
        if regs["rsp"] not in self.pending_allocs:
            return False
        flags = self.pending_allocs.pop(regs["rsp"])
        obj = regs["rax"]
        slab = slab_at(self.ctx, obj) if obj > 16 else None
        if slab is None:
            return False               # failed, or a large kmalloc (pages, not a slab object)
        if not self.engine.tracked_page(obj):
            cache = self._cache(slab.cache)
            if self._hide_slab(slab, cache, target.register("cr3"), fresh=False):
                target.flush_tlb()
        self.engine.allocated(obj, zeroed=flags is None or bool(flags & GFP_ZERO))
        return False

    def apply_scope(self) -> int:
        """While on: hide the slabs of caches that became tracked, show those no longer tracked.
        Returns the pages hidden."""
        if self.engine is None:
            return 0
        self._drain_in_flight()
        self._hook_scoped_modules()
        caches = self._tracked_caches(self.ctx)
        known = set()
        for page, (_slab, cache) in list(self.engine.slabs.items()):
            if cache.address in caches:
                known.add(cache.address)
            elif not self.engine.scoped_objects_on(page):
                self._release_page(page)
        return self._hide_caches(self.ctx, {a: c for a, c in caches.items() if a not in known})

    def _tracked_caches(self, ctx: GuestContext) -> dict:
        out = {}
        for s in container_entries(ctx.vmem, ctx.layout, "slab_caches", "kmem_cache.list"):
            cache = self._cache(s)
            if self.scope.tracks_cache(cache.name):
                out[s] = cache
        return out

    def _cache(self, address: int):
        cache = self.caches.get(address)
        if cache is None:
            cache = self.caches[address] = read_cache(self.ctx, address)
        return cache

    def _hide_slab(self, slab: SlabRef, cache, cr3: int, fresh: bool) -> int:
        hidden = SESSION.hidden_pages()
        count = 0
        for page in self.engine.track_slab(slab, cache, fresh):
            try:
                hidden.hide(cr3, page, flush=False)
            except paging.PagingError:
                self.engine.untrack_page(page)
                continue
            self.pages.add(page)
            count += 1
        return count

    # -- hooks (inside Breakpoint.stop: no breakpoint changes, no execution control) ------------
    def on_fault(self) -> bool:
        engine = self.engine
        if engine is None:
            return False
        registers = FAULT_REGISTERS.read()
        addr = registers["rsi"]           # spurious_kernel_fault(error_code, address)
        if not engine.tracked_page(addr):
            return False                 # not ours: the kernel handles it
        self.faults_handled += 1
        try:
            findings = self._complete(addr, registers)
        except KeyboardInterrupt:
            raise
        except Exception as exc:         # never leave the guest faulting on a hidden page
            gdb.write(f"kmemcheck: turned off after an internal error at {addr:#x}: {exc}\n")
            self._show_pages()
            self.engine, self.last_engine = None, engine
            self.cleanup_pending = True
            findings = []
            target.set_pc(self.gadget)
        for finding in findings:
            gdb.write(render_finding(finding, Painter(settings.color_enabled())) + "\n")
        return False

    def _complete(self, addr: int, registers: dict[str, int]) -> list[Finding]:
        """Decide, then change the guest in one Commit: staged memory writes, the saved
        registers, and rip (spurious_kernel_fault returns 1)."""
        engine = self.engine
        memory = engine.memory
        regs_addr = self._pt_regs(registers["rsp"])
        saved = ptregs.unpack(memory.read(regs_addr, ptregs.SIZE))
        regs = dict(saved, fs_base=registers["fs_base"], gs_base=registers["gs_base"])
        outcome = engine.handle(regs, memory.read(regs["rip"], 16))
        if TRACE:
            TRACE.write(f"{addr:#x} rip={regs['rip']:#x} rsp={regs['rsp']:#x} pt_regs={regs_addr:#x} "
                        f"new_rip={(outcome.regs or {}).get('rip', 0):#x}\n")
            TRACE.flush()
        steps = [lambda w=w: memory.write(*w) for w in outcome.writes]
        if outcome.regs is None:
            steps.append(lambda: self._step_natively(addr, regs_addr, saved))
        else:
            steps += [lambda f=f: memory.write(regs_addr + f[0], f[1])
                      for f in ptregs.changed_fields(saved, outcome.regs)]
        if outcome.turn_off:
            steps.append(lambda: self._one_shot_off(engine))
        steps.append(lambda: target.set_pc(self.gadget))
        self._run_commit(steps)
        return outcome.findings

    def _one_shot_off(self, engine: Engine) -> None:
        gdb.write("kmemcheck: one-shot report done, turning off\n")
        self._show_pages()
        self.engine, self.last_engine = None, engine
        self.cleanup_pending = True

    def _pt_regs(self, rsp: int) -> int:
        """Where the entry code saved the faulting context, relative to rsp at
        spurious_kernel_fault: found once by its shape, then checked each time."""
        memory = self.engine.memory
        if self.regs_offset is not None:
            regs = ptregs.unpack(memory.read(rsp + self.regs_offset, ptregs.SIZE))
            if ptregs.looks_like_kernel_frame(regs):
                return rsp + self.regs_offset
        raw = memory.read(rsp, 4096 - (rsp & 0xFFF) if (rsp & 0xFFF) > 2048 else 2048)
        for off in range(0, len(raw) - ptregs.SIZE + 1, 8):
            regs = ptregs.unpack(raw[off:off + ptregs.SIZE])
            if (regs["orig_ax"] == MASK64 and ptregs.looks_like_kernel_frame(regs)
                    and regs["rsp"] in (rsp + off + ptregs.SIZE, rsp + off + ptregs.SIZE + 8)):
                self.regs_offset = off
                return rsp + off
        raise KmemcheckError(f"no struct pt_regs found above rsp {rsp:#x}")

    def _step_natively(self, addr: int, regs_addr: int, saved: dict) -> None:
        """Let the guest run the instruction itself with the page shown, trapping after it."""
        page = addr & ~(PAGE_SIZE - 1)
        SESSION.hidden_pages().show(page)
        self.pages.discard(page)
        self.engine.memory.write(regs_addr + ptregs.OFFSET["rflags"],
                                 (saved["rflags"] | TF).to_bytes(8, "little"))
        self.stepping = (page, saved["rflags"])

    def on_debug_trap(self) -> bool:
        """exc_debug(struct pt_regs *regs) after a natively stepped instruction: hide the page
        again, restore TF in the saved flags, and return from exc_debug at once."""
        if self.stepping is None:
            return False
        page, rflags = self.stepping
        regs = CALL_REGISTERS.read()
        memory = (self.engine or self.last_engine).memory
        flags_at = regs["rdi"] + ptregs.OFFSET["rflags"]
        flags = int.from_bytes(memory.read(flags_at, 8), "little")
        steps = [lambda: self._hide_again(page)] if self.engine is not None else []
        steps += [lambda: memory.write(flags_at, ((flags & ~TF) | (rflags & TF)).to_bytes(8, "little")),
                  lambda: setattr(self, "stepping", None),
                  lambda: target.set_pc(self.gadget + len(RETURN_ONE) - 1)]    # its `ret`
        self._run_commit(steps)
        return False

    def _hide_again(self, page: int) -> None:
        try:
            SESSION.hidden_pages().hide(target.register("cr3"), page, flush=False)
            self.pages.add(page)
        except paging.PagingError:
            self.engine.untrack_page(page)
        target.flush_tlb()

    def _run_commit(self, steps) -> None:
        self.commit = Commit(steps, target.HOOK_STOPS[0])
        self.commit.run()

    def finish_interrupted(self, action) -> None:
        """gdb raised KeyboardInterrupt (a Ctrl-C) inside a hook: finish what this stop changes
        in the guest (a tracked fault must not reach the kernel half handled), or run the hook
        again if it had not started changing anything."""
        commit = self.commit
        if commit is not None and commit.stop == target.HOOK_STOPS[0]:
            commit.run()
        else:
            action()

    def _slab_base(self, slab_struct: int) -> int:
        """Direct-map address of the page whose struct page / struct slab is SLAB_STRUCT."""
        return self.ctx.page_offset + (slab_struct - self.ctx.vmemmap) // STRUCT_PAGE_SIZE * PAGE_SIZE

    def _release_page(self, page: int) -> None:
        """Show a page again and stop shadowing it."""
        SESSION.hidden_pages().show(page)
        self.pages.discard(page)
        self.engine.untrack_page(page)

    def on_new_slab(self) -> bool:
        """The return of allocate_slab(): rax is the new struct slab *."""
        if self.engine is None:
            return False
        slab_struct = CALL_REGISTERS.read()["rax"]
        if not slab_struct:
            return False
        cache = self._cache(self.ctx.u64(slab_struct + self.ctx.layout.off("slab.slab_cache")))
        if self.scope.tracks_cache(cache.name):
            slab = slab_at(self.ctx, self._slab_base(slab_struct))
            if slab is not None and self._hide_slab(slab, cache, target.register("cr3"), fresh=True):
                target.flush_tlb()
        return False

    def on_free_slab(self) -> bool:
        """__free_slab(s, slab): the slab goes back to the page allocator: stop hiding and
        shadowing its pages."""
        if self.engine is None:
            return False
        base = self._slab_base(CALL_REGISTERS.read()["rsi"])
        if not self.engine.tracked_page(base):
            return False
        _slab, cache = self.engine.slabs[base]
        for page in range(base, base + cache.slab_bytes, PAGE_SIZE):
            self._release_page(page)
        return False

    # -- engine callbacks -----------------------------------------------------------------------
    def _is_allocator(self, pc: int) -> bool:
        block = gdb.block_for_pc(pc)
        function = None
        while block is not None:
            if block.function is not None:
                function = block.function
            block = block.superblock
        if function is None:
            located = SESSION.symbolizer().lookup(pc)
            return bool(located and located.symbol.name in ALLOCATOR_FUNCTIONS)
        if function.name in ALLOCATOR_FUNCTIONS:
            return True
        filename = function.symtab.filename if function.symtab else ""
        return filename.endswith(ALLOCATOR_FILES)

    def _read_track(self, cache, start: int) -> list[int]:
        track = read_alloc_track(self.ctx, cache, start)
        return (track.stack or [track.addr]) if track else []

    def _keep(self, finding: Finding) -> bool:
        from .kmemcheck_details import describe_finding
        describe_finding(finding)
        if self.options.bitfield_ok and finding.details.get("field", {}).get("kind") == "bitfield" \
                and finding.kind == "uninitialized":
            return False
        return not any(s.matches(finding) for s in self.suppressions)

    # -- state ------------------------------------------------------------------------------------
    def on_stop(self, event) -> None:
        """A stop that is not one of our breakpoints (Ctrl-C, another breakpoint) can land on a
        hook's address before gdb ran the hook: a tracked fault would then reach the kernel
        unhandled when the guest goes on. Handle it now, as the breakpoint would have."""
        if self.engine is None or isinstance(event, gdb.BreakpointEvent) and any(
                b in self.hooks for b in event.breakpoints):
            return
        try:
            pc = int(gdb.selected_frame().pc())
        except gdb.error:
            return
        for hook in self.hooks[:2]:          # the fault and the single-step hooks
            if hook.location and hook.is_valid() and pc == self.hook_addresses.get(hook.number):
                hook.stop()

    def finish_cleanup(self) -> None:
        """Delete hooks left by a turn-off that happened inside a stop (one-shot, error) and
        hooks of unloaded modules."""
        if self.cleanup_pending:
            self.disable()
        for hook in self.dead_hooks:
            if hook.is_valid():
                hook.delete()
        self.dead_hooks = []

    def current_engine(self) -> Engine | None:
        """The running engine, or the last one after a turn-off (its reports stay readable)."""
        return self.engine or self.last_engine


KMEMCHECK = Kmemcheck()


def register_events() -> None:
    gdb.events.stop.connect(KMEMCHECK.on_stop)
