"""What the guest kernel itself reported on its console: oopses, BUG:/WARNING: splats, SLUB's
consistency reports (slub_debug=F, Z, P), panics. Each is a finding of a run, beside the
checkers' own, parsed from the console text into records."""
from __future__ import annotations

import re
from dataclasses import dataclass

TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")
# (kind, how its first line looks). A "BUG: ..." line followed by "Oops:" is one report.
STARTS = [
    ("slub", re.compile(r"^BUG (\S+) \([^)]*\): (.*)")),     # mm/slub.c slab_bug()
    ("bug", re.compile(r"^(kernel BUG at .*|BUG: .*)")),
    ("oops", re.compile(r"^(Oops: .*|general protection fault.*)")),
    ("warning", re.compile(r"^WARNING: .*")),
    ("panic", re.compile(r"^Kernel panic - not syncing.*")),
]
END_TRACE = re.compile(r"^---\[ end (trace|Kernel panic)")
TASK_END = "</TASK>"
MAX_LINES = 80
WHO = re.compile(r"\bPID: (\d+) Comm: (\S+)")


@dataclass
class KernelReport:
    kind: str                # slub | bug | oops | warning | panic
    title: str               # the first line
    text: str                # the whole report as printed
    pid: int | None = None
    comm: str | None = None
    cache: str | None = None # slub: the cache named

    def to_json(self) -> dict:
        return {"kind": self.kind, "title": self.title, "pid": self.pid, "comm": self.comm,
                "cache": self.cache, "text": self.text}

    @classmethod
    def from_json(cls, doc: dict) -> "KernelReport":
        return cls(doc["kind"], doc["title"], doc["text"], doc["pid"], doc["comm"], doc["cache"])


def _start(line: str) -> tuple[str, re.Match] | None:
    for kind, pattern in STARTS:
        m = pattern.match(line)
        if m:
            return kind, m
    return None


def parse_kernel_reports(console: str) -> list[KernelReport]:
    """Every report in CONSOLE text, in order. A report runs to its `---[ end trace` line, a
    SLUB report to the end of its stack dump, any other to the next report (MAX_LINES at most)."""
    lines = [TIMESTAMP.sub("", ln) for ln in console.replace("\r", "").splitlines()]
    reports: list[KernelReport] = []
    i = 0
    while i < len(lines):
        started = _start(lines[i])
        if started is None:
            i += 1
            continue
        kind, m = started
        body = [lines[i]]
        j = i + 1
        while j < len(lines) and len(body) < MAX_LINES:
            line = lines[j]
            if _start(line) and not (kind == "bug" and line.startswith("Oops: ")):
                break
            body.append(line)
            j += 1
            if END_TRACE.match(line) or (kind == "slub" and line.strip() == TASK_END):
                break
        if kind == "bug" and any(ln.startswith("Oops: ") for ln in body):
            kind = "oops"
        who = next((WHO.search(ln) for ln in body if WHO.search(ln)), None)
        reports.append(KernelReport(kind, lines[i].strip(), "\n".join(body),
                                    int(who.group(1)) if who else None,
                                    who.group(2) if who else None,
                                    m.group(1) if kind == "slub" else None))
        i = j
    return reports
