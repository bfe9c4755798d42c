"""kmemcheck's watchdog: notice a guest that makes no progress, and say what was going on.

kmemcheck must never hang the guest. When it does anyway (a bug of kmemgdb's), waiting out a
CI job's timeout is the worst answer: the watchdog notices, the glue stops the guest, prints
the diagnosis (hook counts, the last handled faults) and turns kmemcheck off.

No progress, for the watchdog's limit of guest running time, is any of:
- the guest's clock stood still (jiffies did not move: the vCPU is stuck with interrupts
  off; the guest ticks periodically, so an idle guest still moves its clock);
- one access faulted again and again without completing (the same instruction, address and
  registers, at least FAULT_LOOP_RATE times a second, nothing else in between);
- a kmemgdb hook itself has been running that long (the host side is stuck).
Everything else counts as progress, an idle guest included.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

FAULT_LOOP_RATE = 10           # identical faults per second that make a fault loop
HISTORY = 16


class FaultLog:
    """The last handled faults and how many of each action (emulated, stepped, verified,
    lost). Kept as tuples: this runs at every tracked access."""

    def __init__(self, size: int = HISTORY):
        self.records: deque[tuple[float, int, int, bytes, str]] = deque(maxlen=size)
        self.counts: dict[str, int] = {}

    def add(self, when: float, address: int, rip: int, code: bytes, action: str) -> None:
        self.records.append((when, address, rip, code, action))
        self.counts[action] = self.counts.get(action, 0) + 1

    def render(self, now: float, name: Callable[[int], str] = lambda pc: "") -> list[str]:
        """One line per fault, newest last; NAME(pc) names the code (`function+off/len`)."""
        lines = []
        for when, address, rip, code, action in self.records:
            where = f" {name(rip)}" if name(rip) else ""
            lines.append(f"  {now - when:7.2f} s ago: {action:<9} address {address:#x} "
                         f"rip {rip:#x}{where} bytes {code[:15].hex()}")
        return lines


class Watchdog:
    """Fed with the guest's run state, its clock and the faults; says when it is stuck."""

    def __init__(self, limit: float):
        self.limit = limit
        self.running_since: float | None = None
        self.clock: tuple[int, float] | None = None      # (jiffies, when it last moved)
        self.loop: tuple[object, float, int] | None = None   # (signature, since, count)
        self.hook_since: float | None = None

    def resumed(self, now: float) -> None:
        self.running_since = now
        self.clock = None
        self.loop = None

    def stopped(self) -> None:
        self.running_since = None

    def hook(self, now: float | None) -> None:
        """A hook started (NOW) or ended (None)."""
        self.hook_since = now

    def fault(self, now: float, signature: object) -> None:
        if self.loop is not None and self.loop[0] == signature:
            self.loop = (signature, self.loop[1], self.loop[2] + 1)
        else:
            self.loop = (signature, now, 1)

    def check(self, now: float, jiffies: int | None) -> str | None:
        """Why the guest is stuck, or None while it makes progress."""
        if not self.limit or self.running_since is None:
            return None
        if self.hook_since is not None and now - self.hook_since >= self.limit:
            return f"a kmemgdb hook has been running for {now - self.hook_since:.0f} s"
        if jiffies is not None:
            if self.clock is None or self.clock[0] != jiffies:
                self.clock = (jiffies, now)
            elif now - max(self.clock[1], self.running_since) >= self.limit:
                return (f"the guest's clock (jiffies {jiffies}) has not moved for "
                        f"{now - max(self.clock[1], self.running_since):.0f} s")
        if self.loop is not None:
            _, since, count = self.loop
            span = now - max(since, self.running_since)
            if span >= self.limit and count >= FAULT_LOOP_RATE * span:
                return (f"the same access faulted {count} times in {span:.0f} s without "
                        "completing")
        return None
