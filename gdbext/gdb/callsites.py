"""Hooks on call instructions: watch who calls a kernel function without a breakpoint in the
function itself, and only while those calls can happen.

Every breakpoint costs the whole guest (QEMU 7.2 compares each with every block of translated
code it looks up: about 3 % of a shell workload each, measured), and one in a function on a
hot page costs more (QEMU runs that page one instruction per block). So the calls are hooked,
not the function, and hooks go when their code can no longer run. Calls in vmlinux are found
in the ELF file (before the kernel runs, init code included); calls in a module when it loads
(do_init_module, before its init runs); tail-call jumps count as calls. Each stop checks the
bytes are still that call: init text is freed, and module text goes with rmmod.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..core.codescan import CALL_LENGTH, CALL_REL32, JMP_REL32, call_target, calls_to, elf_calls_to
from ..core.memory import MemoryError_
from ..core.paging import PagingError
from ..core.kernel import ModuleInfo, list_modules, module_text
from . import target
from .hooks import SilentHook, retire
from .modules import MODULES
from .session import SESSION

CALL_REGISTERS = target.RawRegisters(("rax", "rdi", "rsi", "rdx", "rcx", "r8", "r9", "rsp"))
BRANCHES = (CALL_REL32, JMP_REL32)


@dataclass
class Call:
    """One stop at a watched call (or tail-call jump) instruction, the callee not entered yet."""
    site: int                  # address of the instruction
    function: str              # the callee's name
    module: str | None         # the module whose code calls (None: vmlinux)
    regs: dict[str, int]
    tail: bool = False         # a `jmp`: the callee returns to our caller's caller

    @property
    def returns_to(self) -> int:
        """Where the callee will return (read from the stack for a tail call)."""
        return SESSION.vmem().u64(self.regs["rsp"]) if self.tail else self.site + CALL_LENGTH


class CallWatch:
    """Hooks on the calls to FUNCTIONS (names) made by vmlinux (when KERNEL) and by loaded
    modules (all, or those in MODULE_NAMES). ON_CALL(call) runs at each; a True result keeps
    the guest stopped. SKIP_CALLERS: kernel functions whose calls are left alone."""

    def __init__(self, what: str, functions, on_call: Callable[[Call], bool], kernel: bool = True,
                 module_names: set[str] | None = None, skip_callers: frozenset[str] = frozenset()):
        self.what, self.on_call, self.kernel = what, on_call, kernel
        self.module_names, self.skip_callers = module_names, skip_callers
        table = SESSION.symbolizer().kernel
        self.functions = {table.by_name[n].addr: n for n in functions if n in table.by_name}
        self.hooks: dict[int, tuple[SilentHook, str | None]] = {}
        self.init_sites: dict[str, set[int]] = {}     # module -> hooked calls in its init text
        self.installed = False

    def install(self) -> None:
        if self.installed or not self.functions:
            return
        self.installed = True
        if self.kernel:
            table = SESSION.symbolizer().kernel
            for site, _ in elf_calls_to(SESSION.vmlinux_path(), self.functions, BRANCHES):
                located = table.lookup(site)
                caller = located.symbol.name.split(".")[0] if located else ""
                if caller not in self.skip_callers:
                    self._hook(site, None)
        MODULES.load_listeners.append(self.on_module_load)
        MODULES.unload_listeners.append(self.on_module_unload)
        MODULES.init_done_listeners.append(self.on_init_done)
        if target.connected() and target.paging_on():
            for mod in list_modules(SESSION.vmem(), SESSION.layout()):
                self.on_module_load(mod)

    def remove(self) -> None:
        self._unhook(set(self.hooks))
        self.init_sites.clear()
        for listeners, fn in ((MODULES.load_listeners, self.on_module_load),
                              (MODULES.unload_listeners, self.on_module_unload),
                              (MODULES.init_done_listeners, self.on_init_done)):
            if fn in listeners:
                listeners.remove(fn)
        self.installed = False

    def drop_kernel(self) -> None:
        """Unhook the calls in vmlinux (keep the modules')."""
        self._unhook({a for a, (_, module) in self.hooks.items() if module is None})

    def on_module_load(self, mod: ModuleInfo) -> None:
        if self.module_names is not None and mod.name not in self.module_names:
            return
        vmem, layout = SESSION.vmem(), SESSION.layout()
        for base, size, init in module_text(vmem, layout, mod.address):
            for site, _ in calls_to(vmem.read(base, size), base, self.functions, BRANCHES):
                self._hook(site, mod.name)
                if init:
                    self.init_sites.setdefault(mod.name, set()).add(site)

    def on_init_done(self, mod: ModuleInfo) -> None:
        """The module's init code will not run again: its hooks go (each one costs the guest)."""
        self._unhook(self.init_sites.pop(mod.name, set()))

    def on_module_unload(self, name: str) -> None:
        self.init_sites.pop(name, None)
        self._unhook({addr for addr, (_, module) in self.hooks.items() if module == name})

    def _unhook(self, sites) -> None:
        """Forget the hooks at SITES now, delete them from gdb's event loop (this may run
        inside a stop())."""
        for addr in sites:
            hook = self.hooks.pop(addr, (None,))[0]
            if hook is not None:
                retire(hook)

    def _hook(self, site: int, module: str | None) -> None:
        self._unhook([site])
        hook = SilentHook(f"*{site:#x}", None, self.what)
        hook.action = lambda: self._stop(site, module, hook)
        self.hooks[site] = (hook, module)

    def _stop(self, site: int, module: str | None, hook: SilentHook) -> bool:
        if self.hooks.get(site, (None,))[0] is not hook:
            return False                  # unhooked, its deletion pending
        try:
            code = SESSION.vmem().read(site, CALL_LENGTH)
        except (PagingError, MemoryError_):
            return False
        callee = call_target(code, site, BRANCHES)
        if callee not in self.functions:
            return False                  # the code is gone (freed init text, unloaded module)
        return self.on_call(Call(site, self.functions[callee], module, CALL_REGISTERS.read(),
                                 tail=code[0] == JMP_REL32))
