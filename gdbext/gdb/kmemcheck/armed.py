"""Everything that exists while kmemcheck is on: the engine, the pages it hid, its hooks.

Created by `kmemcheck 1`, dropped by `kmemcheck 0`: no state of a run outlives it, so nothing
a later run sees can describe memory the guest has reused since. While armed, the parts are:
faults.py (the page-fault and single-step hooks), slabs.py (slab lifetimes: new, freed,
constructed), modulescope.py (a module's allocation calls)."""
from __future__ import annotations

import gdb

from ...core import paging
from ...core.codescan import RETURN_ONE, find_bytes
from ...core.heap.context import PAGE_SIZE, GuestContext
from ...core.heap.tracks import read_track
from ...core.hidden import HiddenPages, ThroughHidden
from ...core.kmemcheck import Engine, KmemcheckError
from ...core.watchdog import FaultLog
from .. import target
from ..heapctx import guest_context
from ..hooks import SilentHook
from ..session import SESSION

# SLUB reads free pointers through copy_from_kernel_nofault() when debug_pagealloc is on.
ALLOCATOR_FILES = ("mm/slub.c", "mm/slab_common.c")
ALLOCATOR_FUNCTIONS = {"copy_from_kernel_nofault"}


class PageSet:
    """The pages kmemcheck hid, through the kernel's own page-table root."""

    def __init__(self, hidden: HiddenPages, root: int):
        self.hidden = hidden
        self.root = root
        self.pages: set[int] = set()

    def hide(self, page: int) -> bool:
        try:
            self.hidden.hide(self.root, page, flush=False)
        except paging.PagingError:
            return False
        self.pages.add(page)
        return True

    def show(self, page: int) -> None:
        self.hidden.show(page)
        self.pages.discard(page)

    def show_all(self) -> int:
        count = sum(1 for page in list(self.pages) if self.hidden.show(page))
        self.pages.clear()
        return count

    def owns(self, page: int) -> bool:
        return page in self.pages and self.hidden.owns(page)

    def forget(self, page: int) -> None:
        """The guest took PAGE back (freed, unmapped): not ours to show any more."""
        self.hidden.forget(page)
        self.pages.discard(page)

    def __len__(self) -> int:
        return len(self.pages)


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


class Armed:
    """kmemcheck's state while on. CHECKER owns scope, options and suppressions."""

    def __init__(self, checker):
        self.checker = checker
        self.ctx: GuestContext = guest_context()
        self.pages = PageSet(SESSION.hidden_pages(), SESSION.kernel_root())
        self._check_small_pages()
        self.gadget = self._find_gadget()
        memory = ThroughHidden(self.ctx.vmem, SESSION.hidden_pages())
        self.engine = Engine(self.ctx, memory, checker.options, self.is_allocator, checker.keep,
                             self._read_track, checker.in_scope, self._thread_size(),
                             self._function_at)
        self.hooks: list[SilentHook] = []
        self.commit: Commit | None = None
        self.log = FaultLog()
        self.off = False                 # turned off inside a hook: every action is a no-op
        self.watch = None                # the watchdog, when one is set
        self.counts: dict[str, int] = {}  # stops per hook action
        self.faults = self.slabs = self.modules = None    # set by the checker, in this order

    # -- setup -------------------------------------------------------------------------------
    def _check_small_pages(self) -> None:
        """Hiding needs a 4 KiB direct map: debug_pagealloc=on gives one."""
        probe = self.ctx.page_offset + (self.ctx.max_pfn // 2) * PAGE_SIZE
        try:
            paging.find_pte(self.ctx.phys, self.pages.root, probe)
        except paging.LargePage:
            raise KmemcheckError("the guest's direct map uses 2 MiB pages, so single heap pages "
                                 "cannot be hidden: boot it with debug_pagealloc=on") from None
        except paging.NotMapped:
            pass           # a free page unmapped by debug_pagealloc: 4 KiB mapped, as wanted

    def _find_gadget(self) -> int:
        start = self.ctx.layout.sym("_stext")
        gadget = find_bytes(self.ctx.vmem.read(start, 1 << 20), start, RETURN_ONE)
        if gadget is None:
            raise KmemcheckError("no `mov eax,1; ret` in the first MiB of kernel text")
        return gadget

    def _thread_size(self) -> int:
        """THREAD_SIZE: the size of init_task's stack, init_stack (a macro has no DWARF)."""
        sym = SESSION.symbolizer().kernel.by_name.get("init_stack")
        return sym.size if sym is not None and sym.size else 16384

    def hook(self, spec: str, action, name: str | None = None) -> SilentHook:
        """A silent hook at SPEC running ACTION while kmemcheck is on; its stops are counted
        under NAME (the action's name by default) for the watchdog's diagnosis."""
        hook = SilentHook(spec, self._guarded(action, name or action.__name__), "kmemcheck",
                          self.finish_interrupted)
        self.hooks.append(hook)
        return hook

    def _guarded(self, action, name: str):
        def run():
            self.counts[name] = self.counts.get(name, 0) + 1
            return False if self.off else action()
        return run

    def in_scope(self, cache) -> bool:
        return self.checker.in_scope(cache)

    # -- guest changes -------------------------------------------------------------------------
    def run_commit(self, steps) -> None:
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

    def flush(self) -> None:
        target.flush_tlb()

    def turn_off_here(self, why: str) -> None:
        """Inside a hook: show every page, stop acting; the hooks go at the next prompt."""
        gdb.write(f"kmemcheck: {why}\n")
        self.pages.show_all()
        self.off = True
        self.checker.cleanup_pending = True

    def disarm(self) -> int:
        """Show every page and delete every hook (not inside a hook)."""
        shown = self.pages.show_all()
        for hook in self.hooks:
            if hook.is_valid():
                hook.delete()
        self.hooks = []
        self.off = True
        return shown

    # -- engine callbacks -----------------------------------------------------------------------
    def is_allocator(self, pc: int) -> bool:
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

    def _function_at(self, pc: int) -> int:
        located = SESSION.symbolizer().lookup(pc)
        return located.symbol.addr if located else 0

    def _read_track(self, cache, start: int) -> list[int]:
        track = read_track(self.ctx, cache, start)
        return (track.stack or [track.addr]) if track else []
