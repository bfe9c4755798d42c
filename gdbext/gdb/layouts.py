"""Struct layouts from the guest's DWARF (gdb.Type -> gdbext.core.layout.TypeLayout), and the
type of a heap object found from the pointer variables of the frames that were using it."""
from __future__ import annotations

from typing import NamedTuple

import gdb

from ..core.kernel import KernelModelError
from ..core.layout import Member, TypeLayout

_AGGREGATES = (gdb.TYPE_CODE_STRUCT, gdb.TYPE_CODE_UNION)
_cache: dict[tuple, TypeLayout] = {}


def _generation() -> tuple:
    """Loaded objfiles: module symbols coming or going may add or change types."""
    return tuple(o.filename for o in gdb.objfiles() if o.is_valid())


def lookup(type_name: str) -> gdb.Type:
    """gdb.Type named TYPE_NAME ('struct check_req', 'check_req', 'kernel_siginfo_t')."""
    name = type_name.strip()
    candidates = [name]
    if not name.startswith(("struct ", "union ", "enum ")):
        candidates += [f"struct {name}", f"union {name}"]
    for cand in candidates:
        try:
            return gdb.lookup_type(cand)
        except gdb.error:
            continue
    raise KernelModelError(f"the guest kernel has no type {name}")


def layout_of(type_name: str) -> TypeLayout:
    """Layout of the named struct or union, cached per name (and per set of loaded objfiles)."""
    key = (type_name, _generation())
    found = _cache.get(key)
    if found is None:
        found = layout_from_type(lookup(type_name))
        if len(_cache) > 512:
            _cache.clear()
        _cache[key] = found
    return found


def layout_from_type(t: gdb.Type) -> TypeLayout:
    """TypeLayout of a struct or union type (typedefs looked through); other types get a layout
    without members."""
    real = t.strip_typedefs()
    name = type_name(t)
    if real.code not in _AGGREGATES:
        return TypeLayout(name, real.sizeof, ())
    if real.tag:
        name = type_name(real)    # name typedef'd structs by their tag: 'struct siginfo'
    return TypeLayout(name, real.sizeof, _members(real), real.code == gdb.TYPE_CODE_UNION)


def type_name(t: gdb.Type) -> str:
    """C spelling of a type, whatever gdb's current language (`str(type)` drops `struct` while
    the selected frame is in assembly code)."""
    if t.code == gdb.TYPE_CODE_TYPEDEF and t.name:
        return t.name
    if t.code in _AGGREGATES:
        kind = "union" if t.code == gdb.TYPE_CODE_UNION else "struct"
        return f"{kind} {t.tag}" if t.tag else f"{kind} {{...}}"
    if t.code == gdb.TYPE_CODE_ENUM:
        return f"enum {t.tag}" if t.tag else "enum {...}"
    if t.code == gdb.TYPE_CODE_PTR:
        inner = type_name(t.target())
        return inner + ("*" if inner.endswith("*") else " *")
    if t.code == gdb.TYPE_CODE_ARRAY:
        dims = ""
        while t.code == gdb.TYPE_CODE_ARRAY:
            lo, hi = t.range()
            dims += f"[{hi - lo + 1}]" if hi >= lo else "[]"
            t = t.target()
        return f"{type_name(t)} {dims}"
    if t.name:
        return t.name
    return str(t)


def _members(t: gdb.Type) -> tuple[Member, ...]:
    out = []
    for f in t.fields():
        if not hasattr(f, "bitpos"):          # static members (C++ only)
            continue
        out.append(_member(f))
    return tuple(out)


def _member(f: gdb.Field) -> Member:
    ft = f.type
    real = ft.strip_typedefs()
    name = f.name or ""
    offset = f.bitpos // 8
    if f.bitsize:
        bits_end = f.bitpos % 8 + f.bitsize
        return Member(name, offset, (bits_end + 7) // 8, type_name(ft), bit_offset=f.bitpos,
                      bit_size=f.bitsize)
    if real.code in _AGGREGATES:
        return Member(name, offset, real.sizeof, type_name(ft), members=_members(real),
                      is_union=real.code == gdb.TYPE_CODE_UNION)
    if real.code == gdb.TYPE_CODE_ARRAY:
        lo, hi = real.range()
        count = max(hi - lo + 1, 0)
        elem = real.target().strip_typedefs()
        members, is_union = (), False
        if elem.code in _AGGREGATES:
            members, is_union = _members(elem), elem.code == gdb.TYPE_CODE_UNION
        return Member(name, offset, real.sizeof if count else 0, type_name(ft), members=members,
                      is_union=is_union, array_count=count, element_size=elem.sizeof)
    return Member(name, offset, real.sizeof, type_name(ft))


# -- which type is this object? ------------------------------------------------------------------

class PointerVar(NamedTuple):
    type: gdb.Type        # the struct/union pointed to (typedefs stripped)
    value: int            # the pointer's value
    name: str             # the variable
    level: int            # frame level (0 = newest)
    function: str         # the frame's function


def pointers_into(obj_start: int, obj_size: int, max_frames: int = 8) -> list[PointerVar]:
    """Pointer variables (arguments and locals) of the newest MAX_FRAMES frames that point into
    [OBJ_START, OBJ_START+OBJ_SIZE) and whose target is a struct or union, best first: pointers
    to the start of the object before interior ones, then newer frames first."""
    found: list[PointerVar] = []
    try:
        frame = gdb.newest_frame()
    except gdb.error:
        return []
    level = 0
    while frame is not None and level < max_frames:
        found.extend(_frame_pointers(frame, level, obj_start, obj_size))
        try:
            frame = frame.older()
        except gdb.error:
            break
        level += 1
    found.sort(key=lambda p: (p.value != obj_start, p.level))
    return found


def object_type_near(obj_start: int, obj_size: int,
                     max_frames: int = 8) -> tuple[gdb.Type, int] | None:
    """(struct type, pointer value) of the best pointer variable of the newest frames pointing
    into the object, or None: names the type of the object a faulting function was using."""
    found = pointers_into(obj_start, obj_size, max_frames)
    return (found[0].type, found[0].value) if found else None


def _frame_pointers(frame: gdb.Frame, level: int, start: int, size: int) -> list[PointerVar]:
    try:
        block = frame.block()
    except (gdb.error, RuntimeError):
        return []
    try:
        function = frame.name() or "??"
    except gdb.error:
        function = "??"
    out, seen = [], set()
    while block is not None and not block.is_global and not block.is_static:
        for sym in block:
            if not (sym.is_variable or sym.is_argument) or sym.name in seen:
                continue
            seen.add(sym.name)        # an inner declaration hides an outer one of the same name
            hit = _pointer_into(frame, sym, start, size)
            if hit is not None:
                out.append(PointerVar(hit[0], hit[1], sym.name, level, function))
        if block.function is not None:
            break
        block = block.superblock
    return out


def _pointer_into(frame: gdb.Frame, sym: gdb.Symbol, start: int, size: int):
    try:
        ptype = sym.type.strip_typedefs()
        if ptype.code != gdb.TYPE_CODE_PTR:
            return None
        target = ptype.target().strip_typedefs()
        if target.code not in _AGGREGATES:
            return None
        value = frame.read_var(sym)
        if value.is_optimized_out:
            return None
        addr = int(value) & 0xFFFF_FFFF_FFFF_FFFF
    except (gdb.error, gdb.MemoryError, ValueError, RuntimeError):
        return None
    if start <= addr < start + size:
        return target, addr
    return None
