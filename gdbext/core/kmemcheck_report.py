"""kmemcheck reports rendered the kernel's way (mm/kmemcheck.c's error recall, 2.6.31-4.14),
followed by what kmemcheck could not say: the accessed field, the source line, where the
uninitialized bytes were created, and the object's field map for copies out of its view."""
from __future__ import annotations

from .kmemcheck import Finding
from .render import Painter
from .report import Frame, render_frames

REGISTER_ROWS = (("rax", "rbx", "rcx"), ("rdx", "rsi", "rdi"), ("rbp", "r8", "r9"),
                 ("r10", "r11", "r12"), ("r13", "r14", "r15"))


def _reg_name(name: str) -> str:
    return name.upper() if not name[1:].isdigit() else f"R{int(name[1:]):02d}"


def render_finding(f: Finding, paint: Painter) -> str:
    d = f.details
    lines = [paint("red", f"WARNING: kmemcheck: {f.title}")]
    lines.append("".join(f"{b:02x}" for b in f.window_bytes))
    lines.append("".join(f" {c}" for c in f.window_shadow))
    lines.append(" " * (1 + 2 * (f.first_bad - f.window_start)) + "^")
    where = d.get("frame")
    lines.append(f"RIP: {f.regs.get('cs', 0x10):04x}:[<{f.pc:016x}>] "
                 f"{where.symbol if where and where.symbol else '?'}"
                 + (f" [{where.module}]" if where and where.module else ""))
    lines.append(f"RSP: {f.regs.get('ss', 0x18):04x}:{f.regs['rsp']:016x}  "
                 f"EFLAGS: {f.regs['rflags']:08x}")
    for row in REGISTER_ROWS:
        lines.append(" ".join(f"{_reg_name(r)}: {f.regs[r]:016x}" for r in row))
    frames: list[Frame] = d.get("backtrace") or []
    if frames:
        lines.append(render_frames(frames, " "))
    lines.append(f"instruction: {f.instruction}")
    field = d.get("field")
    if f.object is not None:
        obj = f.object
        name = field["text"] if field else f"offset {f.first_bad - obj.start}"
        kind = " (padding)" if field and field["kind"] == "padding" else ""
        lines.append(paint("yellow", f"accessed: {name}{kind}") +
                     f", offset {f.first_bad - obj.start} of {obj.size}-byte object "
                     f"{obj.start:#x} from {obj.source}")
    if where and where.file:
        lines.append(f"source: {where.file}:{where.line}" if where.line else f"source: {where.file}")
    if f.copy_to is not None:
        lines.append(f"copied {f.copy_size} bytes to untracked memory at {f.copy_to:#x}, "
                     "taking uninitialized bytes out of kmemcheck's view")
    if d.get("field_map"):
        lines.append("object field map (i initialized, u uninitialized, f freed, a unallocated):")
        lines.append(d["field_map"])
    if f.origin is not None:
        o = f.origin
        moved = f.object is None or o.object != f.object.start
        lines.append(f"uninit was created at: allocation of {o.size}-byte object {o.object:#x} "
                     f"from cache {o.cache}" + (" (bytes copied from there)" if moved else ""))
        origin_frames: list[Frame] = d.get("origin_backtrace") or []
        if origin_frames:
            lines.append(render_frames(origin_frames, " "))
        else:
            lines.append(" (no allocation backtrace: boot with slub_debug=U,CACHE for one)")
    return "\n".join(lines)


def _frames_json(frames) -> list[dict]:
    return [f.to_json() for f in frames or []]


def finding_json(f: Finding) -> dict:
    d = f.details
    where = d.get("frame")
    return {
        "kind": f.kind, "access": f.access, "address": f.address, "size": f.size,
        "first_bad": f.first_bad, "pc": f.pc, "instruction": f.instruction,
        "symbol": where.symbol if where else None, "module": where.module if where else None,
        "file": where.file if where else None, "line": where.line if where else None,
        "padding": bool(d.get("field") and d["field"]["kind"] == "padding"),
        "field": d.get("field"),
        "object": None if f.object is None else {
            "address": f.object.start, "size": f.object.size, "cache": f.object.cache,
            "kind": f.object.kind, "merged_into": f.object.merged_into,
            "offset": f.first_bad - f.object.start, "shadow": f.object_shadow,
            "alloc_backtrace": _frames_json(d.get("origin_backtrace"))
            if f.origin and f.origin.object == f.object.start else []},
        "origin": None if f.origin is None else {
            "address": f.origin.object, "size": f.origin.size, "cache": f.origin.cache,
            "alloc_backtrace": _frames_json(d.get("origin_backtrace"))},
        "copy_to": f.copy_to, "copy_size": f.copy_size if f.copy_to is not None else None,
        "window": {"address": f.window_start, "hex": f.window_bytes.hex(), "shadow": f.window_shadow},
        "registers": {k: v for k, v in f.regs.items() if k != "orig_ax"},
        "backtrace": _frames_json(d.get("backtrace")),
    }


def suppression_specs(text: str) -> list[tuple[int, str]]:
    """(line number, spec) of each suppression in a file: one `site=|cache=|field=GLOB` per
    line, as `kmemcheck suppress` takes them; `#` starts a comment."""
    specs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            specs.append((number, line))
    return specs
