"""What a kmemcheck finding needs from gdb: the interrupted code's backtrace (through the
exception-frame unwinder), the DWARF name of the accessed bytes, the object's field map and the
allocation backtrace. Runs only for findings, inside the fault's stop."""
from __future__ import annotations

import gdb

from ...core.kernel import KernelModelError
from ...core.kmemcheck import Finding
from ...core.layout import describe, field_map, render_field_map
from ..layouts import layout_from_type, object_type_near
from ..unwind import interrupted_pc
from ..symbolize import frame_for

MAX_FRAMES = 16


def interrupted_backtrace(pc: int) -> list:
    """Frames of the code that faulted, innermost first: gdb's frames beyond the fault handler's
    entry stub (unwind.py's unwinder takes gdb there), from the interrupted frame at PC to the
    last kernel frame."""
    frames = [frame_for(pc, return_address=False)]
    frame, found = gdb.newest_frame(), False
    while frame is not None and len(frames) < MAX_FRAMES:
        try:
            if found and frame.type() != gdb.INLINE_FRAME:
                fpc = frame.pc()
                if fpc >> 63 == 0:           # user space: the kernel part is complete
                    break
                frames.append(frame_for(fpc))
            elif not found:
                found = interrupted_pc(frame) == pc
            frame = frame.older()
        except gdb.error:
            break
    return frames


def describe_finding(f: Finding) -> None:
    """Fill f.details: frame, backtrace, field, field_map, origin_backtrace."""
    d = f.details
    if d:
        return
    d["frame"] = frame_for(f.pc, return_address=False)
    d["backtrace"] = interrupted_backtrace(f.pc)
    if f.origin is not None and f.origin.alloc_pcs:
        d["origin_backtrace"] = [frame_for(pc) for pc in f.origin.alloc_pcs]
    if f.object is None:
        return
    try:
        found = object_type_near(f.object.start, f.object.size)
    except (gdb.error, KernelModelError):
        found = None
    if found is None:
        return
    gtype, base = found
    layout = layout_from_type(gtype)
    offset = f.first_bad - base
    ref = describe(layout, offset, max(1, f.address + f.size - f.first_bad))
    d["field"] = {"kind": ref.kind, "path": ref.path, "text": ref.text, "offset": ref.offset,
                  "size": ref.size, "type": layout.name}
    if f.copy_to is not None:
        letters = f.object_shadow[base - f.object.start:]
        rows = field_map(layout, letters)
        d["field_map"] = render_field_map(rows, set(range(offset, offset + 1)))
