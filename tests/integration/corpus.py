"""The kmemcheck corpus module's expectations (tests/modules/kmemgdb_corpus), matched with
kmemcheck's reports. Each case prints

    kmemgdb_corpus: case NAME base 0x... size N expect KIND:ACCESS:OFFSET:SIZE,... done

and its reports are the ones, in order, whose address lies in [base, base + size)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

CASE_LINE = re.compile(r"kmemgdb_corpus: case (\S+) base ([0-9a-f]+) size (\d+) expect (\S+) "
                       r"sink \S+ done")


@dataclass
class Case:
    name: str
    base: int
    size: int
    expected: list[tuple[str, str, int, int]]
    reported: list[tuple[str, str, int, int]] = field(default_factory=list)

    def holds(self, address: int) -> bool:
        return self.base <= address < self.base + self.size


def parse_cases(log: str) -> list[Case]:
    cases = []
    for name, base, size, expect in CASE_LINE.findall(log):
        expected = []
        if expect != "none":
            for item in expect.split(","):
                kind, access, off, n = item.split(":")
                expected.append((kind, access, int(off), int(n)))
        cases.append(Case(name, int(base, 16), int(size), expected))
    return cases


def attribute(cases: list[Case], reports: list[dict]) -> list[dict]:
    """Give each report to the case it belongs to; returns the reports no case accounts for.
    Cases and reports are in running order, and consecutive cases often reuse one address
    (a freed object is handed out again): a report goes to the first case from the current
    one on that holds its address and still expects it, else to the first that holds it."""
    stray, at = [], 0
    for r in reports:
        holders = [i for i in range(at, len(cases)) if cases[i].holds(r["address"])]
        if not holders:
            stray.append(r)
            continue
        for i in holders:
            case = cases[i]
            item = (r["kind"], r["access"], r["address"] - case.base, r["size"])
            if case.expected.count(item) > case.reported.count(item):
                break
        else:
            i = holders[0]
        case = cases[i]
        case.reported.append((r["kind"], r["access"], r["address"] - case.base, r["size"]))
        at = i
    return stray


def mismatches(cases: list[Case], stray: list[dict]) -> list[str]:
    """One line per case whose reports differ from its expectation, and per stray report."""
    out = [f"{c.name}: expected {c.expected or 'none'}, reported {c.reported or 'none'}"
           for c in cases if c.reported != c.expected]
    out += [f"report outside every case: {r['kind']} {r['access']} {r['address']:#x} size "
            f"{r['size']} at {r['symbol']}: {r['instruction']}" for r in stray]
    return out


def reports_json(gdb) -> dict:
    out = gdb.checked("kmemcheck report --json")
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
