"""`kmem`: what the extension sees of the guest, and the page-hiding primitive kmemcheck uses."""
from __future__ import annotations

import dataclasses
import json

import gdb

from ...core import kernel, paging, render
from .. import guestnames, settings, target
from ..modules import MODULES
from ..session import SESSION
from ..symbolize import frame_for
from ...core.report import render_frames
from .base import ADDRESS_HELP, KmemCommand, address, parser, require_stopped_guest


def painter() -> render.Painter:
    return render.Painter(settings.color_enabled())


class Kmem(KmemCommand):
    """Kernel memory tools of kmemgdb: `kmem info`, `kmem vtop ADDR`, `kmem pte hide|show ADDR`.

Run `help kmem SUBCOMMAND` for each."""
    NEEDS_STOPPED_GUEST = False

    def __init__(self):
        super().__init__("kmem", prefix=True)

    def run(self, args) -> None:
        if args:
            raise gdb.GdbError(f"kmem: unknown subcommand {args[0]!r} (see `help kmem`)")
        gdb.execute("help kmem")


class KmemInfo(KmemCommand):
    PARSER = parser("kmem info", "Show the guest kernel as kmemgdb sees it.", """\
Kernel release, command line, RAM, the direct-map/vmalloc/vmemmap bases, slab caches, loaded
modules and whether guest RAM is read through the host mapping (fast) or the gdbstub (slow).""")
    PARSER.add_argument("--json", action="store_true", help="one JSON object on one line")

    def __init__(self):
        super().__init__("kmem info")

    def run(self, args) -> None:
        info = kernel.kernel_info(SESSION.vmem(), SESSION.layout())
        if args.json:
            doc = dataclasses.asdict(info)
            doc["ram_file"] = SESSION.phys().path if SESSION.ram_file_active() else None
            gdb.write(json.dumps(doc) + "\n")
            return
        phys = SESSION.phys()
        mapping = (f"active ({phys.path}, {render.size_text(phys.size)})" if SESSION.ram_file_active()
                   else "inactive: memory goes through gdbstub packets (set kmemgdb ram-file PATH)")
        gdb.write(render.render_info(info, mapping, painter()) + "\n")


class KmemVtop(KmemCommand):
    PARSER = parser("kmem vtop", "Translate a guest virtual address by walking the guest page "
                    "tables on the host.", """\
Prints the physical address, the page size, the leaf entry's flags and value, and where that
entry lives in guest physical memory.""")
    PARSER.add_argument("addr", type=address, metavar="ADDR", help=ADDRESS_HELP)

    def __init__(self):
        super().__init__("kmem vtop")

    def run(self, args) -> None:
        phys = SESSION.phys()
        cr3 = target.register("cr3")
        if target.register("cr4") & paging.CR4_LA57:
            raise gdb.GdbError("kmem vtop: the guest uses 5-level paging, which kmemgdb does not model")
        try:
            t = paging.translate(phys, cr3, args.addr)
        except paging.NotMapped as exc:
            hidden = SESSION.hidden_pages()
            frame = hidden.frame(args.addr) if exc.entry.level == 1 else None
            if frame is None:
                raise
            t = paging.Translation(args.addr, frame + (args.addr & 0xFFF), 4096, exc.entry)
            gdb.write("(page hidden by kmemgdb: present bit cleared)\n")
        gdb.write(render.render_translation(t, painter()) + "\n")


class KmemPte(KmemCommand):
    PARSER = parser("kmem pte", "Print the 4 KiB PTE mapping ADDR; hide or show single guest "
                    "pages (the primitive kmemcheck is built on).", """\
Pages mapped by 2 MiB or 1 GiB entries are refused: boot the guest with debug_pagealloc=on.""")
    PARSER.add_argument("addr", type=address, metavar="ADDR", help=ADDRESS_HELP)

    def __init__(self):
        super().__init__("kmem pte", prefix=True)

    def run(self, args) -> None:
        entry = paging.find_pte(SESSION.phys(), target.register("cr3"), args.addr)
        gdb.write(render.render_entry(args.addr, entry, args.addr in SESSION.hidden_pages(),
                                      painter()) + "\n")


class KmemPteHide(KmemCommand):
    PARSER = parser("kmem pte hide", "Hide the 4 KiB guest page holding ADDR: every guest access "
                    "to it then faults.", """\
Clears the present bit of its PTE and flushes QEMU's TLB. The page stays hidden until
`kmem pte show`, `kmem pte show-all`, detach or quit.""")
    PARSER.add_argument("addr", type=address, metavar="ADDR", help=ADDRESS_HELP)

    def __init__(self):
        super().__init__("kmem pte hide")

    def run(self, args) -> None:
        hidden = SESSION.hidden_pages()
        entry = hidden.hide(target.register("cr3"), args.addr)
        gdb.write(render.render_entry(args.addr, entry, True, painter()) + "\n")


class KmemPteShow(KmemCommand):
    PARSER = parser("kmem pte show", "Show again the guest page holding ADDR that `kmem pte hide` "
                    "hid.")
    PARSER.add_argument("addr", type=address, metavar="ADDR", help=ADDRESS_HELP)

    def __init__(self):
        super().__init__("kmem pte show")

    def run(self, args) -> None:
        if not SESSION.hidden_pages().show(args.addr):
            raise gdb.GdbError(f"kmem pte show: page {args.addr & ~0xFFF:#x} was not hidden by kmemgdb")
        entry = paging.find_pte(SESSION.phys(), target.register("cr3"), args.addr)
        gdb.write(render.render_entry(args.addr, entry, False, painter()) + "\n")


class KmemPteShowAll(KmemCommand):
    # Never fails: it runs from the detach, disconnect and quit hooks.
    PARSER = parser("kmem pte show-all", "Show every guest page kmemgdb hid (turning kmemcheck "
                    "off).")
    PARSER.add_argument("--quiet", action="store_true", help="say nothing when none was hidden")
    NEEDS_STOPPED_GUEST = False

    def __init__(self):
        super().__init__("kmem pte show-all")

    def run(self, args) -> None:
        from ..kmemcheck import KMEMCHECK
        try:
            count = 0
            if KMEMCHECK.armed is not None:
                gdb.write("kmemcheck: off (the guest is being left)\n")
                count = KMEMCHECK.disable()
            count += SESSION.show_all_pages()
        except Exception as exc:  # a hook must not abort detach/quit
            gdb.write(f"kmemgdb: could not show hidden pages: {exc}\n")
            return
        if not args.quiet or count:
            gdb.write(f"kmemgdb: {count} hidden page(s) shown again\n")


class KmemPteList(KmemCommand):
    PARSER = parser("kmem pte list", "List the guest pages kmemgdb has hidden.")
    NEEDS_STOPPED_GUEST = False

    def __init__(self):
        super().__init__("kmem pte list")

    def run(self, args) -> None:
        pages = SESSION.hidden.pages if SESSION.hidden else {}
        gdb.write(f"{len(pages)} hidden page(s)\n")
        for page in sorted(pages.values(), key=lambda p: p.vaddr):
            gdb.write(f"  {page.vaddr:#x}  PTE at physical {page.pte_paddr:#x}\n")


class KmemErrors(KmemCommand):
    PARSER = parser("kmem errors", "List the errors kmemgdb's hooks met while the guest ran.", """\
An internal error of kmemcheck, a verify mismatch, the watchdog, a module whose symbols could
not load. A checker that failed inside a hook did not check everything it claims to:
`kmemgdb run` fails (exit status 2) when this list is not empty.""")
    PARSER.add_argument("--json", action="store_true", help="one JSON list on one line")
    PARSER.add_argument("--verbose", action="store_true",
                        help="where in kmemgdb each error happened (a Python traceback)")
    NEEDS_STOPPED_GUEST = False

    def __init__(self):
        super().__init__("kmem errors")

    def run(self, args) -> None:
        from ..hooks import ERRORS, TRACEBACKS
        if args.json:
            gdb.write(json.dumps(ERRORS) + "\n")
            return
        for error, where in zip(ERRORS, TRACEBACKS):
            gdb.write(error + "\n")
            if args.verbose and where.strip() != "NoneType: None":
                gdb.write(where)
        gdb.write(f"kmemgdb: {len(ERRORS)} error(s) inside hooks\n")


class KmemSymbols(KmemCommand):
    PARSER = parser("kmem symbols", "Load gdb symbols for every module loaded in the guest (from "
                    "`kmemgdb module-path`).", """\
Symbols of modules loaded later arrive by themselves; this is for modules loaded before attach.""")

    def __init__(self):
        super().__init__("kmem symbols")

    def run(self, args) -> None:
        count = MODULES.load_all()
        gdb.write(f"kmemgdb: {count} module(s) loaded in the guest, "
                  f"symbols for {len(MODULES.loaded)}\n")


class KmemSymbolize(KmemCommand):
    PARSER = parser("kmem symbolize", "Name guest code addresses the kernel's way, with source "
                    "file and line.", """\
Addresses are taken as return addresses (the line shown is the call's) unless --exact.""")
    PARSER.add_argument("--json", action="store_true", help="one JSON list on one line")
    PARSER.add_argument("--exact", action="store_true", help="PCs are not return addresses")
    PARSER.add_argument("pcs", type=address, nargs="+", metavar="PC", help=ADDRESS_HELP)

    def __init__(self):
        super().__init__("kmem symbolize")

    def run(self, args) -> None:
        frames = [frame_for(pc, not args.exact) for pc in args.pcs]
        if args.json:
            gdb.write(json.dumps([f.to_json() for f in frames]) + "\n")
        else:
            gdb.write(render_frames(frames, "") + "\n")


class KmemFailAlloc(KmemCommand):
    PARSER = parser("kmem fail-alloc", "Make the Nth allocation a module makes fail, as if the "
                    "allocator returned NULL.", """\
`kmem fail-alloc MODULE N` sets it, `kmem fail-alloc off` stops it; alone, it shows the plan.
Counts the calls the module's code makes to the allocation helpers (kmalloc, kmem_cache_alloc,
kstrdup, kvmalloc, vmalloc, devm_kmalloc, ...), from when it is set (set it before loading
the module to reach its init). The Nth call is skipped and returns NULL: the module's error
path runs, and `kmemleak scan` shows what it leaks. Each counted call stops the guest once.""")
    PARSER.add_argument("--json", action="store_true", help="the plan and its outcome as JSON")
    PARSER.add_argument("module", nargs="?", metavar="MODULE", help="module name, or `off`",
                        complete=lambda _done, _partial: ["off", *guestnames.GUEST_NAMES.modules()])
    PARSER.add_argument("nth", nargs="?", type=int, metavar="N",
                        help="which allocation fails (1 = the first)")
    NEEDS_STOPPED_GUEST = False

    def __init__(self):
        super().__init__("kmem fail-alloc")

    def run(self, args) -> None:
        from ..failalloc import FAIL_ALLOC
        if args.module == "off":
            FAIL_ALLOC.stop()
            gdb.write("kmemgdb: fail-alloc off\n")
            return
        if args.module is not None:
            if args.nth is None or args.nth < 1:
                raise gdb.GdbError("kmem fail-alloc: expected MODULE N with N >= 1, or off")
            require_stopped_guest("kmem fail-alloc")
            FAIL_ALLOC.start(args.module.replace("-", "_"), args.nth)
            gdb.write(f"kmemgdb: allocation {args.nth} of module {args.module} will fail\n")
            return
        plan = FAIL_ALLOC.plan
        if args.json:
            gdb.write(json.dumps(plan.to_json() if plan else None) + "\n")
        elif plan is None:
            gdb.write("kmemgdb: no fail-alloc plan\n")
        else:
            done = (f"made {plan.injected['function']} fail" if plan.injected else "not reached yet")
            gdb.write(f"kmemgdb: allocation {plan.nth} of module {plan.module}: {plan.calls} "
                      f"call(s) counted, {done}\n")


def register() -> None:
    guestnames.register_events()
    for cls in (Kmem, KmemInfo, KmemFailAlloc, KmemErrors, KmemSymbols, KmemSymbolize, KmemVtop, KmemPte, KmemPteHide, KmemPteShow, KmemPteShowAll,
                KmemPteList):
        cls()
