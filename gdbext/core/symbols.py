"""Symbols and sections of vmlinux and modules, read with pyelftools (no gdb needed).

Used to name addresses the kernel's way (`kmalloc_trace+0x26/0x60 [mod]`) and to find the
data sections that are roots of a leak scan.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection


MODULE_ALIASES = frozenset({"init_module", "cleanup_module"})
SHF_EXECINSTR = 0x4
# How far past a size-less code label (assembly entry points) an address may be and still be
# named after it.
LABEL_REACH = 4096


class SymbolError(Exception):
    """A symbol or ELF file kmemgdb needs is missing."""


@dataclass(frozen=True)
class Symbol:
    name: str
    addr: int
    size: int


@dataclass(frozen=True)
class Section:
    name: str
    addr: int
    size: int
    flags: int


@dataclass(frozen=True)
class Located:
    """An address resolved to a symbol: `name+off/size`, with the module when not vmlinux."""
    symbol: Symbol
    offset: int
    module: str | None = None

    def __str__(self) -> str:
        return f"{self.symbol.name}+{self.offset:#x}/{self.symbol.size:#x}"


class SymbolTable:
    """Sorted function and object symbols of one ELF file, shifted by BIAS per section."""

    def __init__(self, symbols: list[Symbol], sections: list[Section], module: str | None = None,
                 labels: dict[str, int] | None = None):
        # lookup() walks backwards from the last symbol at or below an address, so at one address
        # module_init()/module_exit() aliases and size-less labels sort first: the real,
        # sized function is found first.
        self.symbols = sorted(symbols, key=lambda s: (s.addr, s.name not in MODULE_ALIASES,
                                                      s.size > 0, -s.size))
        self._addrs = [s.addr for s in self.symbols]
        self.by_name = {s.name: s for s in self.symbols}
        # Linker labels (_sdata, __bss_start: STT_NOTYPE) have addresses but name no code.
        for name, addr in (labels or {}).items():
            self.by_name.setdefault(name, Symbol(name, addr, 0))
        self.sections = sections
        self.module = module

    @classmethod
    def from_elf(cls, path: str | Path, section_bases: dict[str, int] | None = None,
                 module: str | None = None) -> "SymbolTable":
        """Read PATH. For a relocatable .ko, SECTION_BASES gives each loaded section's address."""
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            headers = list(elf.iter_sections())
            sections = [Section(s.name, _base(s, section_bases), s["sh_size"], s["sh_flags"])
                        for s in headers]
            symtab = elf.get_section_by_name(".symtab")
            if not isinstance(symtab, SymbolTableSection):
                raise SymbolError(f"{path} has no symbol table")
            symbols, labels = [], {}
            for sym in symtab.iter_symbols():
                kind, shndx = sym["st_info"]["type"], sym["st_shndx"]
                if not sym.name or not isinstance(shndx, int) or shndx >= len(sections):
                    continue
                code_label = kind == "STT_NOTYPE" and sections[shndx].flags & SHF_EXECINSTR
                if kind == "STT_NOTYPE" and section_bases is None:
                    labels[sym.name] = sym["st_value"]
                if kind not in ("STT_FUNC", "STT_OBJECT") and not code_label:
                    continue
                base = sections[shndx].addr if section_bases is not None else 0
                if section_bases is not None and base == 0:
                    continue  # section not loaded (e.g. discarded .init after module init)
                symbols.append(Symbol(sym.name, base + sym["st_value"], sym["st_size"]))
        return cls(symbols, sections, module, labels)

    def lookup(self, addr: int) -> Located | None:
        """The symbol containing ADDR (or the nearest one before it when sizes are zero)."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        while i >= 0:
            sym = self.symbols[i]
            if sym.addr <= addr < sym.addr + max(sym.size, 1):
                return Located(sym, addr - sym.addr, self.module)
            if sym.size == 0 and addr - sym.addr < LABEL_REACH and \
                    (i + 1 == len(self.symbols) or self._addrs[i + 1] > addr):
                return Located(sym, addr - sym.addr, self.module)
            if addr - sym.addr > 1 << 20:
                return None
            i -= 1
        return None

    def address(self, name: str) -> int:
        sym = self.by_name.get(name)
        if sym is None:
            raise SymbolError(f"no symbol {name!r}" + (f" in module {self.module}" if self.module else ""))
        return sym.addr

    def section(self, name: str) -> Section:
        for sec in self.sections:
            if sec.name == name:
                return sec
        raise SymbolError(f"no section {name!r}")


def _base(section, bases: dict[str, int] | None) -> int:
    if bases is None:
        return section["sh_addr"]
    return bases.get(section.name, 0)


class Symbolizer:
    """vmlinux plus the loaded modules' tables, each covering an address range."""

    def __init__(self, kernel: SymbolTable):
        self.kernel = kernel
        self.modules: dict[str, tuple[list[tuple[int, int]], SymbolTable]] = {}
        # Unloaded modules still name the code that allocated what they leaked; consulted only
        # when no loaded module covers an address (a later module may reuse the range).
        self.unloaded: list[tuple[list[tuple[int, int]], SymbolTable]] = []

    def add_module(self, name: str, ranges: list[tuple[int, int]], table: SymbolTable) -> None:
        """RANGES: the module's [start, end) areas (core and init layouts in 6.1). Ranges of
        other modules that overlap them are gone (an init area freed after its module's init,
        or a module unloaded without notice): they no longer name these addresses."""
        ranges = [(start, end) for start, end in ranges if end > start]
        for other, (theirs, other_table) in list(self.modules.items()):
            kept = [r for r in theirs if not any(r[0] < end and start < r[1] for start, end in ranges)]
            if len(kept) != len(theirs):
                self.modules[other] = (kept, other_table)
        self.modules[name] = (ranges, table)

    def remove_module(self, name: str) -> None:
        entry = self.modules.pop(name, None)
        if entry is not None:
            self.unloaded.insert(0, entry)
            del self.unloaded[16:]

    def lookup(self, addr: int) -> Located | None:
        for ranges, table in self.modules.values():
            if any(start <= addr < end for start, end in ranges):
                return table.lookup(addr)
        located = self.kernel.lookup(addr)
        if located is None:
            for ranges, table in self.unloaded:
                if any(start <= addr < end for start, end in ranges):
                    return table.lookup(addr)
        return located
