"""kmemleak reports as data (Leak), rendered in the kernel's text format or as JSON, plus
suppressions matched against them."""
from __future__ import annotations

import fnmatch
import shlex
from dataclasses import dataclass, field

from .render import Painter
from .report import Frame, render_frames


@dataclass
class Leak:
    address: int
    size: int                     # as the in-kernel kmemleak reports it
    kind: str                     # direct | indirect
    object_kind: str              # slab | vmalloc | large kmalloc
    cache: str | None
    hex: bytes
    backtrace: list[Frame] = field(default_factory=list)
    comm: str | None = None
    pid: int | None = None
    jiffies: int | None = None
    age: float | None = None      # seconds
    indirect_count: int = 0       # for a direct leak: leaks reachable only through it
    indirect_bytes: int = 0
    owner: int | None = None      # for an indirect leak: the direct leak it hangs from
    requested_size: int | None = None
    cache_aliases: list[str] = field(default_factory=list)   # names SLUB merged into the cache

    def to_json(self) -> dict:
        return {"address": self.address, "size": self.size, "requested_size": self.requested_size,
                "kind": self.kind, "object_kind": self.object_kind, "cache": self.cache,
                "cache_aliases": self.cache_aliases,
                "comm": self.comm, "pid": self.pid, "jiffies": self.jiffies, "age": self.age,
                "hex": self.hex.hex(), "indirect_count": self.indirect_count,
                "indirect_bytes": self.indirect_bytes, "owner": self.owner,
                "backtrace": [f.to_json() for f in self.backtrace]}


def leak_from_json(doc: dict) -> Leak:
    frames = [Frame(**f) for f in doc["backtrace"]]
    return Leak(doc["address"], doc["size"], doc["kind"], doc["object_kind"], doc["cache"],
                bytes.fromhex(doc["hex"]), frames, doc["comm"], doc["pid"], doc["jiffies"],
                doc["age"], doc["indirect_count"], doc["indirect_bytes"], doc["owner"],
                doc["requested_size"], doc.get("cache_aliases", []))


def hex_dump(data: bytes, indent: str = "    ") -> list[str]:
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off:off + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{indent}{' '.join(f'{b:02x}' for b in chunk):<47}  {text}")
    return lines


def render_leak(leak: Leak, paint: Painter) -> str:
    head = paint("red", f"unreferenced object {leak.address:#x} (size {leak.size}):")
    lines = [head]
    who = f'  comm "{leak.comm or "?"}", pid {leak.pid if leak.pid is not None else "?"}'
    if leak.jiffies is not None:
        who += f", jiffies {leak.jiffies}"
        if leak.age is not None:
            who += f" (age {leak.age:.3f}s)"
    lines.append(who)
    where = leak.object_kind + (f" from cache {leak.cache}" if leak.cache else "")
    if leak.cache_aliases:
        where += f" (merged with {', '.join(leak.cache_aliases)})"
    if leak.kind == "direct":
        extra = (f", {leak.indirect_count} indirect object(s) ({leak.indirect_bytes} bytes) "
                 "reachable only through it" if leak.indirect_count else "")
        lines.append(f"  {paint('yellow', 'direct leak')}: {where}{extra}")
    else:
        lines.append(f"  {paint('yellow', 'indirect leak')}: {where}, reachable from "
                     f"leaked object {leak.owner:#x}")
    lines.append(f"  hex dump (first {min(32, len(leak.hex))} bytes):")
    lines += hex_dump(leak.hex[:32])
    lines.append("  backtrace:")
    if leak.backtrace:
        lines.append(render_frames(leak.backtrace, "    "))
    else:
        lines.append("    (none recorded: boot the guest with slub_debug=U for allocation backtraces)")
    return "\n".join(lines)


def render_report(leaks: list[Leak], paint: Painter, notes: list[str]) -> str:
    direct = [l for l in leaks if l.kind == "direct"]
    parts = [render_leak(l, paint) for l in direct]
    indirect = len(leaks) - len(direct)
    summary = f"kmemleak: {len(direct)} direct leak(s)"
    if indirect:
        summary += f", {indirect} indirect (`kmemleak report --all` lists them)"
    parts.append(summary)
    parts += [f"kmemleak: {n}" for n in notes]
    return "\n".join(parts)


@dataclass
class HeapEvent:
    """An allocation or free SLUB recorded for an object (slub_debug=U)."""
    pid: int | None = None
    comm: str | None = None
    jiffies: int | None = None
    age: float | None = None
    backtrace: list[Frame] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"pid": self.pid, "comm": self.comm, "jiffies": self.jiffies, "age": self.age,
                "backtrace": [f.to_json() for f in self.backtrace]}

    @classmethod
    def from_json(cls, doc: dict | None) -> "HeapEvent | None":
        if doc is None:
            return None
        return cls(doc["pid"], doc["comm"], doc["jiffies"], doc["age"],
                   [Frame(**f) for f in doc["backtrace"]])


@dataclass
class HeapFinding:
    """A bug the heap walk saw in the allocator's own state: a double free, a corrupted
    freelist. Its slab's objects are then never reported as leaks."""
    kind: str                      # double free | corrupted freelist | heap walk error
    what: str
    cache: str | None = None
    address: int | None = None     # the object freed twice / whose free pointer is bad
    alloc: HeapEvent | None = None
    free: HeapEvent | None = None

    def to_json(self) -> dict:
        return {"kind": self.kind, "what": self.what, "cache": self.cache, "address": self.address,
                "alloc": self.alloc.to_json() if self.alloc else None,
                "free": self.free.to_json() if self.free else None}

    @classmethod
    def from_json(cls, doc: dict) -> "HeapFinding":
        return cls(doc["kind"], doc["what"], doc["cache"], doc["address"],
                   HeapEvent.from_json(doc["alloc"]), HeapEvent.from_json(doc["free"]))


def render_heap_finding(finding: HeapFinding, paint: Painter) -> str:
    where = f" object {finding.address:#x}" if finding.address is not None else ""
    cache = f" in cache {finding.cache}" if finding.cache else ""
    lines = [paint("red", f"{finding.kind}:{where}{cache}"), f"  {finding.what}"]
    for label, event in (("last allocated", finding.alloc), ("last freed", finding.free)):
        if event is None:
            continue
        age = f" (age {event.age:.3f}s)" if event.age is not None else ""
        lines.append(f'  {label} by comm "{event.comm or "?"}", pid '
                     f'{event.pid if event.pid is not None else "?"}{age}:')
        lines.append(render_frames(event.backtrace, "    ") if event.backtrace else "    (no backtrace)")
    return "\n".join(lines)


@dataclass
class Suppression:
    """A leak is suppressed when every given field matches (globs for function and cache)."""
    function: str | None = None   # matched against every backtrace frame's function name
    module: str | None = None
    cache: str | None = None
    name: str = ""

    def matches(self, leak: Leak) -> bool:
        if self.cache is not None and not fnmatch.fnmatchcase(leak.cache or "", self.cache):
            return False
        funcs = [f.symbol.split("+", 1)[0] for f in leak.backtrace if f.symbol]
        if self.function is not None and not any(fnmatch.fnmatchcase(f, self.function) for f in funcs):
            return False
        if self.module is not None and not any(f.module == self.module for f in leak.backtrace):
            return False
        return any(v is not None for v in (self.function, self.module, self.cache))

    def line(self) -> str:
        fields = [f"{k}={shlex.quote(v)}" for k, v in (("function", self.function),
                  ("module", self.module), ("cache", self.cache)) if v is not None]
        return " ".join(fields) + (f"  # {self.name}" if self.name else "")


class SuppressionError(ValueError):
    pass


def parse_suppressions(text: str, source: str = "suppressions") -> list[Suppression]:
    """One suppression per line: `function=GLOB module=NAME cache=GLOB`, `#` comments."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line, _, comment = raw.partition("#")
        if not line.strip():
            continue
        sup = Suppression(name=comment.strip())
        for token in shlex.split(line):
            key, sep, value = token.partition("=")
            if not sep or key not in ("function", "module", "cache") or not value:
                raise SuppressionError(f"{source}:{number}: expected function=GLOB, module=NAME "
                                       f"or cache=GLOB, got {token!r}")
            setattr(sup, key, value)
        out.append(sup)
    return out


def suppression_for(leak: Leak) -> Suppression:
    """A suppression matching LEAK: its first non-allocator frame, its module, its cache."""
    allocator = ("kmalloc", "__kmalloc", "kmem_cache_alloc", "__vmalloc", "vmalloc", "vzalloc",
                 "kzalloc", "slab_", "__slab", "___slab", "kmalloc_trace", "__kmem_cache_alloc")
    func = next((f.symbol.split("+", 1)[0] for f in leak.backtrace
                 if f.symbol and not f.symbol.startswith(allocator)), None)
    module = next((f.module for f in leak.backtrace if f.module), None)
    return Suppression(function=func, module=module, cache=leak.cache if func is None else None,
                       name=f"leak of {leak.size} bytes at {leak.address:#x}")
