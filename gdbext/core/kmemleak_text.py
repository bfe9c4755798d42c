"""Parse the in-kernel kmemleak's report (/sys/kernel/debug/kmemleak, mm/kmemleak.c 6.1 format).

Used to compare the host-side scanner with the kernel's own result on the same run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_OBJECT = re.compile(r"^unreferenced object 0x([0-9a-f]+) \(size (\d+)\):")
_COMM = re.compile(r'^\s+comm "(.*)", pid (\d+), jiffies (\d+)(?: \(age ([\d.]+)s\))?')
_HEX = re.compile(r"^\s+((?:[0-9a-f]{2} )+[0-9a-f]{2})\s")
_FRAME = re.compile(r"^\s+\[<([0-9a-f]+)>\] (\S+?)\+0x([0-9a-f]+)/0x([0-9a-f]+)(?: \[(\S+)\])?")


@dataclass
class KernelFrame:
    pc: int
    function: str
    offset: int
    length: int
    module: str | None

    @property
    def symbol(self) -> str:
        return f"{self.function}+{self.offset:#x}/{self.length:#x}"


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
            leak.backtrace.append(KernelFrame(int(m.group(1), 16), m.group(2), int(m.group(3), 16),
                                              int(m.group(4), 16), m.group(5)))
        elif (m := _HEX.match(line)) and not leak.backtrace:
            leak.hex += bytes.fromhex(m.group(1))
    return leaks
