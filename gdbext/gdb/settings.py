"""`set kmemgdb ...` settings: RAM file, module search path, colors."""
from __future__ import annotations

import os

import gdb


class _Prefix(gdb.Command):
    def __init__(self, name: str):
        super().__init__(name, gdb.COMMAND_DATA, prefix=True)


class RamFile(gdb.Parameter):
    """Path of the guest's shared RAM file (QEMU memory-backend-file with share=on).

    With it, kmemgdb reads and writes guest memory without debugger packets. Empty: go through
    the gdbstub's physical-memory mode instead (much slower)."""
    set_doc = "Set the guest RAM file used for direct memory access."
    show_doc = "Show the guest RAM file used for direct memory access."

    def __init__(self):
        super().__init__("kmemgdb ram-file", gdb.COMMAND_DATA, gdb.PARAM_OPTIONAL_FILENAME)
        self.value = os.environ.get("KMEMGDB_RAM_FILE", "")

    def get_set_string(self) -> str:
        from .session import SESSION
        SESSION.reset_memory()
        return ""


class ModulePath(gdb.Parameter):
    """Colon-separated directories searched for NAME.ko when the guest loads a module."""
    set_doc = "Set the directories searched for guest module .ko files."
    show_doc = "Show the directories searched for guest module .ko files."

    def __init__(self):
        super().__init__("kmemgdb module-path", gdb.COMMAND_DATA, gdb.PARAM_STRING)
        self.value = os.environ.get("KMEMGDB_MODULE_PATH", "")


class Color(gdb.Parameter):
    """Color in reports: auto follows gdb's `set style enabled` and NO_COLOR."""
    set_doc = "Set whether kmemgdb output is colored."
    show_doc = "Show whether kmemgdb output is colored."

    def __init__(self):
        super().__init__("kmemgdb color", gdb.COMMAND_DATA, gdb.PARAM_ENUM, ["auto", "on", "off"])
        self.value = "auto"


def ram_file() -> str:
    return gdb.parameter("kmemgdb ram-file") or ""


def module_path() -> list[str]:
    return [p for p in (gdb.parameter("kmemgdb module-path") or "").split(":") if p]


def color_enabled() -> bool:
    mode = gdb.parameter("kmemgdb color")
    if mode != "auto":
        return mode == "on"
    return not os.environ.get("NO_COLOR") and bool(gdb.parameter("style enabled"))


def register() -> None:
    _Prefix("set kmemgdb")
    _Prefix("show kmemgdb")
    RamFile()
    ModulePath()
    Color()
