"""Load a guest module's symbols into gdb when the guest loads it, and drop them on unload
(what the kernel's lx-symbols does), so backtraces and breakpoints name module functions.

Two silent internal breakpoints (do_init_module, free_module) stop only on module load and
unload, which are rare; their stop() returns False so the guest keeps running.
"""
from __future__ import annotations

import os
from pathlib import Path

import gdb

from ..core.codescan import CALL_LENGTH, calls_to
from ..core.kernel import ModuleInfo, list_modules, module_info, module_ranges, module_sections
from ..core.symbols import SymbolTable
from . import settings
from .hooks import SilentHook, retire
from .session import SESSION


def module_file_names(name: str) -> list[str]:
    """The kernel turns '-' into '_' in module names; the .ko may use either."""
    return [f"{name}.ko", f"{name.replace('_', '-')}.ko"]


def find_ko(name: str, dirs: list[str]) -> Path | None:
    wanted = set(module_file_names(name))
    for d in dirs:
        for root, _dirs, files in os.walk(d):
            for f in files:
                if f in wanted:
                    return Path(root) / f
    return None


class ModuleSymbols:
    def __init__(self):
        self.loaded: dict[str, Path] = {}   # module name -> .ko given to gdb
        self.warned: set[str] = set()
        self.breakpoints: list[gdb.Breakpoint] = []
        # Called with the ModuleInfo after a load, with the name before an unload, and with
        # the ModuleInfo once its init function has returned (its init code never runs again).
        self.load_listeners: list = []
        self.unload_listeners: list = []
        self.init_done_listeners: list = []
        self._after_init: int | None = None
        self._init_hook: SilentHook | None = None

    def install(self) -> None:
        if self.breakpoints:
            return
        self.breakpoints = [SilentHook("do_init_module", self.on_load, "module symbols"),
                            SilentHook("free_module", self.on_free, "module symbols")]

    def _argument(self) -> ModuleInfo:
        """The struct module * both hooked functions take (its fields are read from guest
        memory, not through gdb: a page kmemcheck hid cannot be read through the stub)."""
        mod = int(gdb.parse_and_eval("mod").cast(gdb.lookup_type("unsigned long")))
        return module_info(SESSION.vmem(), SESSION.layout(), mod)

    def on_load(self) -> None:
        mod = self._argument()
        self.load(mod)
        for listener in self.load_listeners:
            listener(mod)
        if self.init_done_listeners and self.after_init() and self._init_hook is None:
            self._init_hook = SilentHook(f"*{self.after_init():#x}", self.on_init_done, "module init")

    def after_init(self) -> int:
        """Where do_init_module() goes on once the module's init function returned: after its
        call to do_one_initcall() (0: not found). A one-shot breakpoint there per load."""
        if self._after_init is None:
            table = SESSION.symbolizer().kernel
            fn, callee = table.by_name.get("do_init_module"), table.by_name.get("do_one_initcall")
            sites = (calls_to(SESSION.vmem().read(fn.addr, fn.size), fn.addr, [callee.addr])
                     if fn and callee and fn.size else [])
            self._after_init = sites[0][0] + CALL_LENGTH if sites else 0
        return self._after_init

    def on_init_done(self) -> None:
        """One stop per module load: the hook goes once it fired."""
        retire(self._init_hook)
        self._init_hook = None
        mod = self._argument()
        for listener in self.init_done_listeners:
            listener(mod)

    def on_free(self) -> None:
        name = self._argument().name
        for listener in self.unload_listeners:
            listener(name)
        self.unload(name)

    def load(self, mod: ModuleInfo) -> None:
        name = mod.name
        ko = find_ko(name, settings.module_path())
        if ko is None:
            if name not in self.warned:
                self.warned.add(name)
                gdb.write(f"kmemgdb: no {name}.ko under `show kmemgdb module-path`; "
                          "its functions will have no names\n")
            return
        mem, layout = SESSION.vmem(), SESSION.layout()
        bases = module_sections(mem, layout, mod.address)
        self.unload(name)
        text = f"{bases['.text']:#x} " if bases.get(".text") else ""  # init/exit-only modules
        rest = " ".join(f"-s {sec} {addr:#x}" for sec, addr in sorted(bases.items())
                        if sec != ".text" and addr and not sec.startswith(".note"))
        gdb.execute(f"add-symbol-file {ko} {text}{rest}", to_string=True)
        self.loaded[name] = ko
        SESSION.symbolizer().add_module(name, module_ranges(mem, layout, mod.address),
                                        SymbolTable.from_elf(ko, bases, name))

    def unload(self, name: str) -> None:
        ko = self.loaded.pop(name, None)
        if ko is not None and any(o.filename == str(ko) for o in gdb.objfiles()):
            gdb.execute(f"remove-symbol-file {ko}", to_string=True)
            SESSION.symbolizer().remove_module(name)

    def load_all(self) -> int:
        """(Re)load symbols of every module loaded in the guest now."""
        mods = list_modules(SESSION.vmem(), SESSION.layout())
        for info in mods:
            self.load(info)
        return len(mods)


MODULES = ModuleSymbols()
