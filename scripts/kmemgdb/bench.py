"""`kmemgdb bench kmemleak`: guest slowdown and scan cost of host-side kmemleak, side by side
with the in-kernel kmemleak and SLUB user tracking, on one kernel in one run. Prints ratios."""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import KmemgdbError
from .guestlab import LabOptions, booted

WORKLOAD = "for i in 1 2 3 4 5; do ls -R /sys > /dev/null; done"


@dataclass
class Config:
    name: str
    append: list[str]
    host_kmemleak: bool
    hooks: bool = False


CONFIGS = [
    Config("plain (gdb attached, no checker)", [], False),
    Config("host kmemleak, no backtraces", [], True),
    Config("host kmemleak, annotation hooks kept on", [], True, hooks=True),
    Config("host kmemleak + slub_debug=U,kmalloc-*", ["slub_debug=U,kmalloc-*"], True),
    Config("in-kernel kmemleak=on", ["kmemleak=on"], False),
    Config("slub_debug=U (all caches)", ["slub_debug=U"], False),
]


def _guest_seconds(lab, command: str) -> float:
    out, status = lab.run(f"time sh -c '{command}'", timeout=600)
    m = re.search(r"real\s+(\d+)m\s*([\d.]+)s", out)
    if status != 0 or not m:
        raise KmemgdbError(f"benchmark command failed: {out.strip()[-300:]}")
    return int(m.group(1)) * 60 + float(m.group(2))


def _stops(lab) -> int:
    """Guest stops so far on kmemgdb's own breakpoints (module and annotation hooks)."""
    out = lab.gdb.checked("python print('HOOK_STOPS', __import__('gdbext.gdb.target').gdb.target.HOOK_STOPS[0])")
    return int(re.search(r"HOOK_STOPS (\d+)", out).group(1))


def measure(config: Config, runs: int, workdir: Path) -> dict:
    with booted(LabOptions(append=config.append), workdir) as lab:
        if not config.host_kmemleak:
            lab.gdb.interrupt()
            lab.gdb.checked("kmemleak off")
            lab.gdb.cont()
        before = None
        if config.host_kmemleak:
            lab.gdb.interrupt()
            lab.gdb.checked("kmemleak scan", timeout=120)   # as `kmemgdb run` does after boot
            if not config.hooks:
                lab.gdb.checked("kmemleak hooks=off")
            before = _stops(lab)
            lab.gdb.cont()
        times = [_guest_seconds(lab, WORKLOAD) for _ in range(runs)]
        result = {"name": config.name, "workload_s": min(times)}
        if config.host_kmemleak:
            lab.gdb.interrupt()
            result["stops"] = _stops(lab) - before
            scans = []
            for _ in range(3):
                out = lab.gdb.checked("kmemleak scan", timeout=120)
                m = re.search(r"(\d+) objects scanned in (\d+) ms", out)
                scans.append((int(m.group(2)), int(m.group(1))))
            result["scan_ms"], result["objects"] = min(scans)
            lab.gdb.cont()
        if "kmemleak=on" in config.append:
            result["kernel_scan_s"] = min(_guest_seconds(lab, "echo scan > /sys/kernel/debug/kmemleak")
                                          for _ in range(3))
        return result


def bench_kmemleak(runs: int = 2) -> int:
    results = []
    with tempfile.TemporaryDirectory(prefix="kmemgdb-bench-") as tmp:
        for k, config in enumerate(CONFIGS):
            results.append(measure(config, runs, Path(tmp) / str(k)))
            print(f"  measured: {config.name}", flush=True)
    base = results[0]["workload_s"]
    print(f"\nworkload: {WORKLOAD!r}, best of {runs}")
    for r in results:
        line = f"{r['name']:<42} {r['workload_s']:6.2f} s  {r['workload_s'] / base:5.2f}x"
        if "stops" in r:
            line += f"  guest stops during workload: {r['stops']}"
        print(line)
    kernel = next(r for r in results if "kernel_scan_s" in r)["kernel_scan_s"]
    for r in results:
        if "scan_ms" in r:
            print(f"scan, {r['name']}: {r['scan_ms']} ms for {r['objects']} objects "
                  f"= {r['scan_ms'] / 1000 / kernel:.2f}x the in-kernel `echo scan` ({kernel * 1000:.0f} ms)")
    return 0
