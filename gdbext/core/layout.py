"""Struct layouts from DWARF as plain values, and naming the bytes of an object with them.

kmemcheck reports name what a faulting access touched: `struct check_req.timeout`, `padding
between timeout and tail in struct check_req`, `bitfield flags in struct foo`, and print the
object's field map with one shadow letter per byte. The gdb glue (gdbext/gdb/layouts.py) builds a
TypeLayout from gdb.Type; tests build them by hand. Nothing here imports gdb.

Offsets of a Member are relative to its parent (the struct/union, or the array element, holding
it); a bitfield's bit_offset is its absolute bit position in that parent (gdb's Field.bitpos), its
offset/size the bytes its bits span.
"""
from __future__ import annotations

from dataclasses import dataclass

PADDING = "<padding>"
BEYOND = "<beyond struct>"
UNION_REST = "<rest of union>"
# field_map expands arrays of structs element by element up to this many elements.
EXPAND_ARRAY_MAX = 8
# render_field_map writes longer letter strings run-length encoded ("200i 56u").
LETTERS_RAW_MAX = 32


@dataclass(frozen=True)
class Member:
    name: str                 # "" for anonymous struct/union members
    offset: int               # byte offset in the parent
    size: int                 # bytes (for bitfields: the bytes the bits span)
    type_name: str            # "u32", "struct list_head", "char [16]"
    bit_offset: int | None = None    # bitfields: absolute bit position in the parent
    bit_size: int | None = None
    members: tuple["Member", ...] = ()   # nested struct/union (or array element) members
    is_union: bool = False               # the member (or array element) is a union
    array_count: int | None = None       # arrays: element count (0: flexible array member)
    element_size: int | None = None      # arrays: bytes per element (needed for flexible arrays)

    @property
    def is_bitfield(self) -> bool:
        return self.bit_size is not None

    @property
    def is_array(self) -> bool:
        return self.array_count is not None

    @property
    def elem_size(self) -> int:
        if self.element_size:
            return self.element_size
        if self.array_count:
            return self.size // self.array_count
        return 0

    @property
    def is_flexible(self) -> bool:
        return self.array_count == 0 and self.elem_size > 0


@dataclass(frozen=True)
class TypeLayout:
    name: str                 # "struct check_req"
    size: int
    members: tuple[Member, ...]
    is_union: bool = False


@dataclass(frozen=True)
class FieldRef:
    kind: str                 # "field" | "padding" | "bitfield" | "outside"
    path: str                 # "struct check_req.timeout"; the container's path for padding
    text: str                 # what a report prints
    offset: int               # offset of the named field (or of the padding gap) in the type
    size: int


# -- describe ------------------------------------------------------------------------------------

def describe(layout: TypeLayout, offset: int, size: int = 1) -> FieldRef:
    """Name the bytes [OFFSET, OFFSET+SIZE) of an object of LAYOUT: the innermost member holding
    OFFSET (an access spanning several fields is named after the one holding its first byte; pass
    the offset of the byte that matters, e.g. the first uninitialized one)."""
    size = max(size, 1)
    if offset < 0 or (offset >= layout.size and not _flexible_covers(layout.members, offset)):
        return FieldRef("outside", layout.name,
                        f"offset {offset}, beyond {layout.name} (size {layout.size})", offset, size)
    return _describe_in(layout.members, layout.is_union, layout.size, offset, size,
                        layout.name, 0)


def _covers(m: Member, off: int) -> bool:
    if m.offset <= off < m.offset + m.size:
        return True
    return m.is_flexible and off >= m.offset


def _flexible_covers(members: tuple[Member, ...], off: int) -> bool:
    return any(m.is_flexible and off >= m.offset for m in members)


def _describe_in(members, is_union: bool, container_size: int, off: int, size: int,
                 path: str, base: int) -> FieldRef:
    """OFF is relative to the container at absolute offset BASE named PATH."""
    found = next((m for m in _ordered(members) if _covers(m, off)), None)
    if found is None:
        return _padding(members, is_union, container_size, off, path, base)
    m = found
    if m.is_bitfield:
        return _bitfields(members, m, off, size, path, base)
    if m.is_array:
        elem = m.elem_size
        if elem <= 0:
            p = _join(path, m.name)
            return FieldRef("field", p, p, base + m.offset, m.size)
        idx = (off - m.offset) // elem
        p = f"{_join(path, m.name)}[{idx}]"
        start = m.offset + idx * elem
        if m.members:
            return _describe_in(m.members, m.is_union, elem, off - start, size, p, base + start)
        return FieldRef("field", p, p, base + start, elem)
    if m.members:
        return _describe_in(m.members, m.is_union, m.size, off - m.offset, size,
                            _join(path, m.name), base + m.offset)
    p = _join(path, m.name)
    return FieldRef("field", p, p, base + m.offset, m.size)


def _bitfields(members, first: Member, off: int, size: int, path: str, base: int) -> FieldRef:
    """The bitfields whose bits lie in the bytes [off, off+size) (relative to the container)."""
    lo, hi = off, off + size
    hit = [m for m in _ordered(members) if m.is_bitfield and m.name
           and m.offset < hi and lo < m.offset + m.size]
    if first not in hit:
        hit.insert(0, first)
    names = ", ".join(m.name or "<unnamed>" for m in hit)
    word = "bitfield" if len(hit) == 1 else "bitfields"
    start = min(m.offset for m in hit)
    end = max(m.offset + m.size for m in hit)
    return FieldRef("bitfield", _join(path, first.name), f"{word} {names} in {path}",
                    base + start, end - start)


def _padding(members, is_union: bool, container_size: int, off: int, path: str,
             base: int) -> FieldRef:
    sized = [m for m in _ordered(members) if m.size > 0]
    if is_union:
        biggest = max(sized, key=lambda m: m.size, default=None)
        start = biggest.size if biggest else 0
        text = (f"trailing padding after {_edge_name(biggest, last=True)} in {path}" if biggest
                else f"padding in {path}")
        return FieldRef("padding", path, text, base + start, container_size - start)
    before = [m for m in sized if m.offset + m.size <= off]
    after = [m for m in _ordered(members) if m.offset > off and (m.size > 0 or m.is_flexible)]
    # Of bitfields ending in the same byte, the last one (highest bits) is next to the gap.
    prev = max(before, key=lambda m: (m.offset + m.size, m.offset, m.bit_offset or 0), default=None)
    nxt = min(after, key=lambda m: m.offset, default=None)
    start = prev.offset + prev.size if prev else 0
    end = nxt.offset if nxt else container_size
    if prev and nxt:
        text = (f"padding between {_edge_name(prev, last=True)} and "
                f"{_edge_name(nxt, last=False)} in {path}")
    elif prev:
        text = f"trailing padding after {_edge_name(prev, last=True)} in {path}"
    elif nxt:
        text = f"padding before {_edge_name(nxt, last=False)} in {path}"
    else:
        text = f"padding in {path}"
    return FieldRef("padding", path, text, base + start, end - start)


def _edge_name(m: Member, last: bool) -> str:
    """A member's name for padding texts; an anonymous member is named by its last (or first)
    named leaf, the one next to the gap."""
    if m.name:
        return m.name
    inner = [x for x in _ordered(m.members)]
    if m.is_union:
        inner = inner[:1]
    for x in (reversed(inner) if last else inner):
        name = _edge_name(x, last)
        if name and not name.startswith("<"):
            return name
    return "<anonymous>"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if name else path


def _ordered(members) -> list[Member]:
    return sorted(members, key=lambda m: (m.offset, m.bit_offset or 0))


# -- field map -----------------------------------------------------------------------------------

Row = tuple[str, int, int, str]


def field_map(layout: TypeLayout, letters: str, at: int | None = None) -> list[Row]:
    """Leaf rows (path relative to the type, offset, size, shadow letters of those bytes) in
    offset order, padding gaps as `<padding>` rows. LETTERS has one shadow letter per byte of the
    object; missing bytes show as '?', bytes past the type are one `<beyond struct>` row (or the
    trailing flexible array's row). A union shows its first member, or with AT (an offset in the
    object) the member describe() picks for it; union bytes that member leaves are one row."""
    spans: list[tuple[str, int, int]] = []
    _rows(layout.members, layout.is_union, layout.size, 0, "", at, spans)
    extra = len(letters) - layout.size
    if extra > 0:
        flex = next((m for m in layout.members if m.is_flexible), None)
        name = f"{flex.name}[]" if flex is not None else BEYOND
        spans.append((name, layout.size, extra))
    spans.sort(key=lambda r: r[1])
    return [(name, off, size, _letters(letters, off, size)) for name, off, size in spans]


def _letters(letters: str, off: int, size: int) -> str:
    got = letters[off:off + size]
    return got + "?" * (size - len(got))


def _rows(members, is_union: bool, container_size: int, base: int, prefix: str,
          at: int | None, out: list) -> None:
    ordered = [m for m in _ordered(members) if m.size > 0]
    if is_union:
        if not ordered:
            if container_size:
                out.append((PADDING, base, container_size))
            return
        chosen = ordered[0]
        if at is not None:
            chosen = next((m for m in ordered if _covers(m, at - base)), chosen)
        _member_rows(chosen, base, prefix, at, out)
        if chosen.offset + chosen.size < container_size:
            start = chosen.offset + chosen.size
            out.append((prefix + UNION_REST, base + start, container_size - start))
        return
    pos = 0
    i = 0
    while i < len(ordered):
        m = ordered[i]
        if m.offset > pos:
            out.append((PADDING, base + pos, m.offset - pos))
        if m.is_bitfield:
            group = [m]
            end = m.offset + m.size
            while i + 1 < len(ordered) and ordered[i + 1].is_bitfield and \
                    ordered[i + 1].offset < end:
                i += 1
                group.append(ordered[i])
                end = max(end, ordered[i].offset + ordered[i].size)
            start = min(g.offset for g in group)
            name = ", ".join(f"{prefix}{g.name or '<unnamed>'}:{g.bit_size}" for g in group)
            out.append((name, base + start, end - start))
            pos = max(pos, end)
        else:
            _member_rows(m, base, prefix, at, out)
            pos = max(pos, m.offset + m.size)
        i += 1
    if pos < container_size:
        out.append((PADDING, base + pos, container_size - pos))


def _member_rows(m: Member, base: int, prefix: str, at: int | None, out: list) -> None:
    name = prefix + m.name
    start = base + m.offset
    if m.is_bitfield:
        out.append((f"{name}:{m.bit_size}", start, m.size))
    elif m.is_array:
        elem = m.elem_size
        if m.members and elem and m.array_count and m.array_count <= EXPAND_ARRAY_MAX:
            for idx in range(m.array_count):
                _rows(m.members, m.is_union, elem, start + idx * elem, f"{name}[{idx}].", at, out)
        else:
            out.append((name, start, m.size))
    elif m.members:
        _rows(m.members, m.is_union, m.size, start, f"{name}." if m.name else prefix, at, out)
    else:
        out.append((name, start, m.size))


def bitfield_bytes(layout: TypeLayout) -> set[int]:
    """Byte offsets in the object that hold bitfield bits (every union member and array element
    counted): a partial write to a bitfield is a read-modify-write of its bytes."""
    out: set[int] = set()
    _bitfield_bytes(layout.members, 0, out)
    return out


def _bitfield_bytes(members, base: int, out: set[int]) -> None:
    for m in members:
        start = base + m.offset
        if m.is_bitfield:
            if m.bit_offset is None:
                out.update(range(start, start + m.size))
            else:
                lo, hi = m.bit_offset, m.bit_offset + (m.bit_size or 0)
                out.update(range(base + lo // 8, base + (hi + 7) // 8))
        elif m.is_array and m.members and m.array_count:
            for idx in range(m.array_count):
                _bitfield_bytes(m.members, start + idx * m.elem_size, out)
        elif m.members:
            _bitfield_bytes(m.members, start, out)


# -- rendering -----------------------------------------------------------------------------------

def render_field_map(rows: list[Row], mark: set[int] | None = None) -> str:
    """Aligned lines, one per row: `  +16  timeout   (4)  uuuu  <-- read here` (rows holding a
    byte of MARK, absolute offsets, get the arrow)."""
    if not rows:
        return ""
    mark = mark or set()
    w_off = max(len(f"+{off}") for _, off, _, _ in rows)
    w_name = max(len(name) for name, _, _, _ in rows)
    w_size = max(len(f"({size})") for _, _, size, _ in rows)
    lines = []
    for name, off, size, letters in rows:
        line = (f"  {'+' + str(off):>{w_off}}  {name:<{w_name}}  {'(' + str(size) + ')':>{w_size}}"
                f"  {_show_letters(letters)}")
        if mark and any(off <= b < off + size for b in mark):
            line += "  <-- read here"
        lines.append(line.rstrip())
    return "\n".join(lines)


def _show_letters(letters: str) -> str:
    if len(letters) <= LETTERS_RAW_MAX:
        return letters
    runs: list[list] = []
    for ch in letters:
        if runs and runs[-1][0] == ch:
            runs[-1][1] += 1
        else:
            runs.append([ch, 1])
    return " ".join(f"{n}{ch}" for ch, n in runs)
