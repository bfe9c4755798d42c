"""Parse the in-kernel kmemleak's report (/sys/kernel/debug/kmemleak, mm/kmemleak.c 6.1 format).

Used to compare the host-side scanner with the kernel's own result on the same run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_OBJECT = re.compile(r"^unreferenced object 0x([0-9a-f]+) \(size (\d+)\):")
_COMM = re.compile(r'^\s+comm "(.*)", pid (\d+), jiffies (\d+)(?: \(age ([\d.]+)s\))?')
_HEX = re.compile(r"^\s+((?:[0-9a-f]{2} )+[0-9a-f]{2})\s")
_FRAME = re.compile(r"^\s+\[<([0-9a-f]+|\(____ptrval____\))>\] (\S+)(?: \[(\S+)\])?")
_SYMBOL = re.compile(r"^(\S+?)\+0x([0-9a-f]+)/0x([0-9a-f]+)$")


@dataclass
class KernelFrame:
    """A frame as the kernel printed it. PC is None when the kernel hashed it (no
    no_hash_pointers); SYMBOL is None when kallsyms could not name it (freed init code)."""
    pc: int | None
    symbol: str | None
    module: str | None


def _frame(m: re.Match) -> KernelFrame:
    pc = None if m.group(1).startswith("(") else int(m.group(1), 16)
    text = m.group(2)
    if _SYMBOL.match(text):
        return KernelFrame(pc, text, m.group(3))
    if text.startswith("0x"):           # an address kallsyms no longer knows
        return KernelFrame(pc if pc is not None else int(text, 16), None, m.group(3))
    return KernelFrame(pc, text, m.group(3))


@dataclass
class KernelLeak:
    address: int
    size: int
    comm: str = ""
    pid: int = 0
    jiffies: int = 0
    age: float | None = None
    hex: bytes = b""
    backtrace: list[KernelFrame] = field(default_factory=list)


def parse_kmemleak(text: str) -> list[KernelLeak]:
    """Every 'unreferenced object' block of TEXT, in order."""
    leaks: list[KernelLeak] = []
    for line in text.replace("\r", "").splitlines():
        m = _OBJECT.match(line)
        if m:
            leaks.append(KernelLeak(int(m.group(1), 16), int(m.group(2))))
            continue
        if not leaks:
            continue
        leak = leaks[-1]
        if m := _COMM.match(line):
            leak.comm, leak.pid, leak.jiffies = m.group(1), int(m.group(2)), int(m.group(3))
            leak.age = float(m.group(4)) if m.group(4) else None
        elif m := _FRAME.match(line):
            leak.backtrace.append(_frame(m))
        elif (m := _HEX.match(line)) and not leak.backtrace:
            leak.hex += bytes.fromhex(m.group(1))
    return leaks
