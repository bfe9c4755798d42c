"""What kmemgdb knows of a guest kernel, from plain values: symbol addresses and struct offsets.

The gdb glue fills a KernelLayout from vmlinux (pyelftools) and DWARF types (gdb); tests fill one
by hand. Functions here read guest memory through a VirtualMemory and never import gdb.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from .vmem import VirtualMemory

# x86-64 4-level layout without KASLR (arch/x86/include/asm/page_64_types.h, pgtable_64_types.h,
# 6.1). Kernels with CONFIG_DYNAMIC_MEMORY_LAYOUT keep the bases in variables of these names.
DEFAULT_BASES = {
    "page_offset_base": 0xFFFF_8880_0000_0000,
    "vmalloc_base": 0xFFFF_C900_0000_0000,
    "vmemmap_base": 0xFFFF_EA00_0000_0000,
}
START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
LIST_LIMIT = 1 << 20


class KernelModelError(Exception):
    """The guest's data structures are not what kmemgdb expects (or are corrupted)."""


class CorruptList(KernelModelError):
    def __init__(self, head: int, what: str):
        super().__init__(f"list at {head:#x} is corrupted: {what}")


@dataclass
class KernelLayout:
    """Symbol addresses and member offsets ('struct.member.sub' -> bytes) of one kernel."""
    symbols: dict[str, int]
    offsets: dict[str, int]
    sizes: dict[str, int] = field(default_factory=dict)
    lookup_offset: Callable[[str], int] | None = None  # fills OFFSETS on demand (gdb types)
    lookup_symbol: Callable[[str], int | None] | None = None
    constants: dict[str, int] = field(default_factory=dict)   # enum values (PG_slab, ...)
    lookup_constant: Callable[[str], int] | None = None
    lookup_size: Callable[[str], int] | None = None          # fills SIZES (struct names)

    def sym(self, name: str) -> int:
        return self._get(self.symbols, self.lookup_symbol, name, "symbol")

    def const(self, name: str) -> int:
        return self._get(self.constants, self.lookup_constant, name, "constant")

    def off(self, path: str) -> int:
        return self._get(self.offsets, self.lookup_offset, path, "member")

    def size(self, struct: str) -> int:
        """sizeof(struct STRUCT)."""
        return self._get(self.sizes, self.lookup_size, struct, "struct")

    def has_sym(self, name: str) -> bool:
        return self._has(self.sym, name)

    def has_member(self, path: str) -> bool:
        return self._has(self.off, path)

    @staticmethod
    def _get(table: dict, lookup, key: str, what: str) -> int:
        if key not in table and lookup:
            value = lookup(key)
            if value is not None:
                table[key] = value
        if key not in table:
            raise KernelModelError(f"the guest kernel has no {what} {key}")
        return table[key]

    @staticmethod
    def _has(getter, key: str) -> bool:
        try:
            getter(key)
        except KernelModelError:
            return False
        return True


def list_for_each(mem: VirtualMemory, head: int, limit: int = LIST_LIMIT) -> Iterator[int]:
    """Addresses of the list_head nodes after HEAD (struct list_head *), detecting corruption."""
    seen: set[int] = set()
    node = mem.u64(head)
    while node != head:
        if node in seen:
            raise CorruptList(head, f"cycle at {node:#x} that does not return to the head")
        if len(seen) >= limit or node == 0:
            raise CorruptList(head, f"bad next pointer {node:#x}")
        seen.add(node)
        yield node
        node = mem.u64(node)


def container_entries(mem: VirtualMemory, layout: KernelLayout, head_sym: str,
                      link: str) -> Iterator[int]:
    """Addresses of the structs linked through member LINK ('struct.member') on list HEAD_SYM."""
    offset = layout.off(link)
    for node in list_for_each(mem, layout.sym(head_sym)):
        yield node - offset


@dataclass
class ModuleInfo:
    name: str
    address: int        # struct module *
    base: int           # core_layout.base: text, rodata and data in one area (6.1)
    size: int


@dataclass
class KernelInfo:
    release: str
    cmdline: str
    totalram_bytes: int
    physical_ram_bytes: int
    bases: dict[str, tuple[int, str]]   # name -> (value, where it came from)
    slab_caches: int
    modules: list[ModuleInfo]


def read_release(mem: VirtualMemory, layout: KernelLayout) -> str:
    """init_uts_ns.name.release (struct uts_namespace, utsname 'release' char[65])."""
    return mem.cstr(layout.sym("init_uts_ns") + layout.off("uts_namespace.name.release"), 65)


def read_bases(mem: VirtualMemory, layout: KernelLayout) -> dict[str, tuple[int, str]]:
    out = {}
    for name, default in DEFAULT_BASES.items():
        if layout.has_sym(name):
            out[name] = (mem.u64(layout.sym(name)), "variable")
        else:
            out[name] = (default, "fixed 4-level layout")
    return out


def module_info(mem: VirtualMemory, layout: KernelLayout, mod: int) -> ModuleInfo:
    """struct module * MOD (6.1: core_layout holds text, rodata and data)."""
    return ModuleInfo(mem.cstr(mod + layout.off("module.name"), 56), mod,
                      mem.u64(mod + layout.off("module.core_layout.base")),
                      mem.u32(mod + layout.off("module.core_layout.size")))


def _module_areas(mem: VirtualMemory, layout: KernelLayout, mod: int):
    """(is_init, base, size, text_size) of the core and init areas of struct module * MOD
    (6.1: core_layout and init_layout; text first in each)."""
    for part, init in (("core_layout", False), ("init_layout", True)):
        yield (init, mem.u64(mod + layout.off(f"module.{part}.base")),
               mem.u32(mod + layout.off(f"module.{part}.size")),
               mem.u32(mod + layout.off(f"module.{part}.text_size")))


def module_ranges(mem: VirtualMemory, layout: KernelLayout, mod: int) -> list[tuple[int, int]]:
    """[start, end) of the core and init areas of struct module * MOD."""
    return [(base, base + size) for _init, base, size, _text in _module_areas(mem, layout, mod)]


def module_text(mem: VirtualMemory, layout: KernelLayout, mod: int) -> list[tuple[int, int, bool]]:
    """(start, size, is_init) of the text of struct module * MOD that is there now (the
    kernel clears init_layout when it frees the init text)."""
    return [(base, text, init) for init, base, _size, text in _module_areas(mem, layout, mod)
            if base and text]


def module_sections(mem: VirtualMemory, layout: KernelLayout, mod: int) -> dict[str, int]:
    """Section name -> load address of struct module * MOD, from mod->sect_attrs
    (CONFIG_KALLSYMS + SYSFS). Read from guest memory, not through the debugger: sect_attrs
    is a heap object, and kmemcheck may have hidden its page."""
    attrs = mem.u64(mod + layout.off("module.sect_attrs"))
    if not attrs:
        return {}
    count = mem.u32(attrs + layout.off("module_sect_attrs.nsections"))
    first = attrs + layout.off("module_sect_attrs.attrs")
    stride = layout.size("module_sect_attr")
    name_at, addr_at = layout.off("module_sect_attr.battr.attr.name"), layout.off("module_sect_attr.address")
    out = {}
    for i in range(count):
        attr = first + i * stride
        out[mem.cstr(mem.u64(attr + name_at), 64)] = mem.u64(attr + addr_at)
    return out


def list_modules(mem: VirtualMemory, layout: KernelLayout) -> list[ModuleInfo]:
    """Loaded modules, newest first (struct module on the static list 'modules')."""
    return [module_info(mem, layout, mod)
            for mod in container_entries(mem, layout, "modules", "module.list")]


def count_slab_caches(mem: VirtualMemory, layout: KernelLayout) -> int:
    return sum(1 for _ in container_entries(mem, layout, "slab_caches", "kmem_cache.list"))


def slab_cache_names(mem: VirtualMemory, layout: KernelLayout) -> list[str]:
    """Names of the caches on slab_caches (what /sys/kernel/slab lists, merged aliases aside)."""
    name = layout.off("kmem_cache.name")
    return [mem.cstr(mem.u64(s + name), 64)
            for s in container_entries(mem, layout, "slab_caches", "kmem_cache.list")]


def kernel_info(mem: VirtualMemory, layout: KernelLayout) -> KernelInfo:
    """Everything `kmem info` shows, read from guest memory."""
    return KernelInfo(
        release=read_release(mem, layout),
        cmdline=mem.cstr(mem.u64(layout.sym("saved_command_line")), 4096),
        totalram_bytes=mem.u64(layout.sym("_totalram_pages")) * 4096,
        physical_ram_bytes=mem.u64(layout.sym("max_pfn")) * 4096,
        bases=read_bases(mem, layout),
        slab_caches=count_slab_caches(mem, layout),
        modules=list_modules(mem, layout),
    )


def system_running(mem: VirtualMemory, layout: KernelLayout) -> bool:
    """Boot is over: system_state has reached SYSTEM_RUNNING (init/main.c, enum system_states)."""
    return mem.u32(layout.sym("system_state")) >= layout.const("SYSTEM_RUNNING")
