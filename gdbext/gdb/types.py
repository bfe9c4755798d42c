"""Struct member offsets, sizes and enum constants from the guest's DWARF, through gdb's types."""
from __future__ import annotations

import gdb

from ..core.kernel import KernelModelError


def member_offset(path: str) -> int:
    """Byte offset of 'struct.member.sub...' (anonymous unions and structs are looked through)."""
    struct, *members = path.split(".")
    try:
        typ = gdb.lookup_type(f"struct {struct}")
    except gdb.error as exc:
        raise KernelModelError(f"the guest kernel has no struct {struct}") from exc
    offset = 0
    for name in members:
        found = _find_field(typ.strip_typedefs(), name)
        if found is None:
            raise KernelModelError(f"struct {struct} has no member {'.'.join(members)}")
        delta, typ = found
        offset += delta
    return offset


def _find_field(typ: gdb.Type, name: str):
    for field in typ.fields():
        if field.name == name:
            return field.bitpos // 8, field.type
        if not field.name and field.type.strip_typedefs().code in (gdb.TYPE_CODE_STRUCT,
                                                                   gdb.TYPE_CODE_UNION):
            inner = _find_field(field.type.strip_typedefs(), name)
            if inner is not None:
                return field.bitpos // 8 + inner[0], inner[1]
    return None


def struct_size(name: str) -> int:
    """sizeof(struct NAME)."""
    try:
        return gdb.lookup_type(f"struct {name}").sizeof
    except gdb.error as exc:
        raise KernelModelError(f"the guest kernel has no struct {name}") from exc


def constant(name: str) -> int:
    """The value of an enum constant of the guest kernel (PG_slab, SYSTEM_RUNNING, ...)."""
    try:
        return int(gdb.parse_and_eval(name))
    except gdb.error as exc:
        raise KernelModelError(f"the guest kernel has no constant {name}") from exc
