"""`kmemgdb bench kmemleak`: guest slowdown and scan cost of host-side kmemleak, side by side
with the in-kernel kmemleak and SLUB user tracking, on one kernel in one run. Prints ratios."""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import KmemgdbError
from .guestlab import LabOptions, booted
from .run import RunOptions, kernel_arguments

WORKLOAD = "for i in 1 2 3 4 5; do ls -R /sys > /dev/null; done"


@dataclass
class Config:
    name: str
    append: list[str]
    host_kmemleak: bool
    hooks: bool = False
    module: str = ""          # a test module loaded before the workload (its code does not run)


RUN_DEFAULT = kernel_arguments(RunOptions(kmemleak=True))   # what `run --kmemleak` boots with

CONFIGS = [
    Config("plain (gdb attached, no checker)", [], False),
    Config("host kmemleak, annotation hooks off", [], True),
    Config("host kmemleak, annotations watched", [], True, hooks=True),
    Config("`run --kmemleak` default: " + " ".join(RUN_DEFAULT), RUN_DEFAULT, True, hooks=True),
    Config("the same, kmemgdb_leaks.ko loaded (5 annotation calls)", RUN_DEFAULT, True, hooks=True,
           module="kmemgdb_leaks"),
    Config("in-kernel kmemleak=on", ["kmemleak=on"], False),
    Config(" ".join(RUN_DEFAULT) + ", no checker", RUN_DEFAULT, False),
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


def measure(config: Config, runs: int, workdir: Path, kernel=None) -> dict:
    modules = [_test_module(config.module, kernel)] if config.module else []
    with booted(LabOptions(append=config.append, modules=modules, kernel=kernel), workdir) as lab:
        if modules:
            lab.run(f"insmod /modules/{modules[0].name}")
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


def _test_module(name: str, kernel=None) -> Path:
    from .kernel import ensure_kernel
    from .modbuild import build_module
    return build_module(kernel or ensure_kernel(),
                        Path(__file__).resolve().parents[2] / "tests/modules" / name)[0]


def bench_kmemleak(runs: int = 2, kernel=None) -> int:
    results = []
    with tempfile.TemporaryDirectory(prefix="kmemgdb-bench-") as tmp:
        for k, config in enumerate(CONFIGS):
            results.append(measure(config, runs, Path(tmp) / str(k), kernel))
            print(f"  measured: {config.name}", flush=True)
    base = results[0]["workload_s"]
    in_kernel = next(r for r in results if "kernel_scan_s" in r)["workload_s"]
    print(f"\nworkload: {WORKLOAD!r}, best of {runs}; ratios to plain and to the in-kernel kmemleak")
    for r in results:
        line = (f"{r['name']:<62} {r['workload_s']:6.2f} s  {r['workload_s'] / base:5.2f}x plain"
                f"  {r['workload_s'] / in_kernel:5.2f}x in-kernel")
        if "stops" in r:
            line += f"  guest stops during workload: {r['stops']}"
        print(line)
    kernel_scan = next(r for r in results if "kernel_scan_s" in r)["kernel_scan_s"]
    for r in results:
        if "scan_ms" in r:
            print(f"scan, {r['name']}: {r['scan_ms']} ms for {r['objects']} objects = "
                  f"{r['scan_ms'] / 1000 / kernel_scan:.2f}x the in-kernel `echo scan` "
                  f"({kernel_scan * 1000:.0f} ms)")
    return 0


# -- kmemcheck -------------------------------------------------------------------------------
CHECK_CASES = ("uninit8 uninit16 uninit32 uninit64 zeroed memset partial memcpy padding uaf "
               "notrack kmalloc32 kzalloc").split()
LIGHT_WORKLOAD = "ls /sys/kernel/slab > /dev/null; cat /proc/meminfo > /dev/null"


def _kmemcheck_stats(lab) -> dict:
    import json
    out = lab.gdb.checked("kmemcheck report --json")
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])["stats"]


def _tracked_run(lab, command: str, timeout: float = 600) -> tuple[float, dict]:
    """Guest seconds of COMMAND and the kmemcheck counters it added."""
    lab.gdb.interrupt()
    before = _kmemcheck_stats(lab)
    lab.gdb.cont()
    seconds = _guest_seconds(lab, command)
    lab.gdb.interrupt()
    after = _kmemcheck_stats(lab)
    lab.gdb.cont()
    return seconds, {k: after[k] - before.get(k, 0) for k in after}


def _gdb_all(lab, *commands: str) -> None:
    lab.gdb.interrupt()
    for command in commands:
        lab.gdb.checked(command)
    lab.gdb.cont()


def bench_kmemcheck(runs: int = 2, loop: int = 3000, busy_cache: str = "kmalloc-192",
                    kernel=None) -> int:
    from .kernel import ensure_kernel
    from .modbuild import build_module
    modules = Path(__file__).resolve().parents[2] / "tests/modules"
    kernel = kernel or ensure_kernel()
    ko = build_module(kernel, modules / "kmemgdb_check")[0]
    corpus = build_module(kernel, modules / "kmemgdb_corpus")[0]
    with tempfile.TemporaryDirectory(prefix="kmemgdb-bench-") as tmp:
        with booted(LabOptions(modules=[ko, corpus], append=["debug_pagealloc=on"], kernel=kernel),
                    Path(tmp)) as lab:
            lab.run("insmod /modules/kmemgdb_check.ko")
            plain = min(_guest_seconds(lab, WORKLOAD) for _ in range(runs))
            light_plain = min(_guest_seconds(lab, LIGHT_WORKLOAD) for _ in range(runs))
            _gdb_all(lab, "kmemcheck track cache kmemgdb_check", "kmemcheck 1")
            small = min(_tracked_run(lab, WORKLOAD)[0] for _ in range(runs))
            loop_s, loop_stats = _tracked_run(
                lab, f"echo loop {loop} > /sys/kernel/debug/kmemgdb_check")
            cases = " ".join(f"echo {c} > /sys/kernel/debug/kmemgdb_check;" for c in CHECK_CASES)
            _, case_stats = _tracked_run(lab, cases)
            _gdb_all(lab, "kmemcheck 0", "kmemcheck notrack cache kmemgdb_check",
                     f"kmemcheck track cache {busy_cache}", "kmemcheck 1")
            busy_s, busy_stats = _tracked_run(lab, LIGHT_WORKLOAD)
            _gdb_all(lab, "kmemcheck 0", f"kmemcheck notrack cache {busy_cache}",
                     "kmemcheck track module kmemgdb_corpus", "set kmemcheck report-limit 100000",
                     "kmemcheck 1")
            corpus_s, corpus_stats = _tracked_run(lab, "insmod /modules/kmemgdb_corpus.ko run_all=1")
            _gdb_all(lab, "kmemcheck 0")
    fraction = lambda st: st["emulated"] / st["faults"] if st["faults"] else 0.0
    print(f"\nguest workload {WORKLOAD!r}, best of {runs}:")
    print(f"  plain (debug_pagealloc=on, gdb attached)  {plain:6.2f} s  1.00x")
    print(f"  kmemcheck on, small unused cache tracked  {small:6.2f} s  {small / plain:5.2f}x")
    print(f"tight read loop over one tracked object ({loop} reads): {loop_stats['faults']} tracked "
          f"accesses in {loop_s:.2f} s = {loop_stats['faults'] / loop_s:.0f} accesses/s, "
          f"fast path {fraction(loop_stats):.1%}")
    print(f"test module cases ({len(CHECK_CASES)}): {case_stats['faults']} tracked accesses, "
          f"fast path {fraction(case_stats):.1%}, {case_stats['stepped']} single-stepped")
    print(f"light workload {LIGHT_WORKLOAD!r} with {busy_cache} tracked: {busy_s:.2f} s vs "
          f"{light_plain:.2f} s plain = {busy_s / light_plain:.1f}x; {busy_stats['faults']} tracked "
          f"accesses ({busy_stats['faults'] / busy_s:.0f}/s), fast path {fraction(busy_stats):.1%}, "
          f"{busy_stats['stepped']} single-stepped, {busy_stats['findings']} findings")
    print(f"corpus module, every case in one init, module scope: {corpus_stats['faults']} tracked "
          f"accesses in {corpus_s:.1f} s ({corpus_stats['faults'] / corpus_s:.0f}/s), fast path "
          f"{fraction(corpus_stats):.1%}, {corpus_stats['stepped']} single-stepped, "
          f"{corpus_stats['findings']} findings")
    return 0
