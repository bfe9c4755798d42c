"""kmemcheck on code written the way drivers write it (tests/modules/kmemgdb_corpus: loops,
inlined copies, atomics, every allocation helper), compiled by the real compiler: every case
reports exactly what it states, verify mode finds the emulator agreeing with the guest, a
module reloaded fifty times gives the same reports, and what goes wrong inside kmemgdb (an
internal error, no progress) stops the run with exit status 2 instead of a hang or a pass."""
from __future__ import annotations

import json
import re

import pytest

from kmemgdb import run as run_module
from kmemgdb.errors import KmemgdbError
from kmemgdb.gdbdriver import WatchdogFired
from kmemgdb.guestlab import LabOptions, booted
from kmemgdb.modbuild import build_module

from .conftest import REPO, Stopped, no_python_errors
from .corpus import attribute, mismatches, parse_cases, reports_json

CORPUS_SRC = REPO / "tests" / "modules" / "kmemgdb_corpus"
MODULE = "kmemgdb_corpus"
CASE_FILE = "/sys/kernel/debug/kmemgdb_corpus"
# One case per kind of tracked memory and helper: the reload soak's exercise.
SOAK_CASES = ("kmalloc kmemdup krealloc_grow cache_ctor cache_alloc kvmalloc_large vmalloc "
              "use_after_free loop_u8 memcpy_64 stosq devm_kmalloc").split()
SOAK_CYCLES = 50
# Sleeps the guest in a fault loop (the injected engine never completes the access).
STUCK = """
import gdbext.gdb.kmemcheck as k
from gdbext.core.kmemcheck import FaultOutcome
k.KMEMCHECK.armed.engine.handle = lambda regs, code: FaultOutcome(dict(regs), [])
"""


@pytest.fixture(scope="module")
def corpus_ko(kernel_build):
    return build_module(kernel_build, CORPUS_SRC)[0]


@pytest.fixture(scope="module")
def lab(corpus_ko, tmp_path_factory):
    """Module scope on the corpus, verify on, room for every report."""
    opts = LabOptions(modules=[corpus_ko], append=["debug_pagealloc=on"])
    with booted(opts, tmp_path_factory.mktemp("corpus")) as lab:
        with Stopped(lab) as gdb:
            for command in (f"kmemcheck track module {MODULE}", "set kmemcheck report-limit 100000",
                            "set kmemcheck verify on", "kmemcheck 1"):
                gdb.checked(command)
        yield lab


def state(lab) -> tuple[dict, list[str]]:
    """kmemcheck's JSON report and kmemgdb's hook errors."""
    with Stopped(lab) as gdb:
        doc = reports_json(gdb)
        errors = json.loads(gdb.checked("kmem errors --json").strip().splitlines()[-1])
    return doc, errors


def run_cases(lab, command: str, timeout: float = 900) -> list:
    """Run COMMAND in the guest; the cases it ran, with the reports made meanwhile."""
    before = len(state(lab)[0]["reports"])
    lab.run("dmesg -c > /dev/null")
    out, status = lab.run(command, timeout=timeout)
    assert status == 0, out
    log, _ = lab.run(f"dmesg | grep '{MODULE}: case'")
    cases = parse_cases(log)
    doc, errors = state(lab)
    assert errors == []
    stray = attribute(cases, doc["reports"][before:])
    assert mismatches(cases, stray) == []
    return cases, doc


def case_count(lab) -> int:
    out, _ = lab.run(f"echo list > {CASE_FILE}; dmesg | grep -c '{MODULE}: has '")
    return int(out.strip())


def test_every_case_in_one_init_with_verify(lab):
    """One init does everything (the mixed module that hung the guest): every case reports
    exactly its expectation, and every host-completed access agreed with the guest's own."""
    cases, doc = run_cases(lab, f"insmod /modules/{MODULE}.ko run_all=1")
    lab.run("dmesg -c > /dev/null")
    assert len(cases) == case_count(lab) > 100
    st = doc["stats"]
    assert st["verified"] > 1000 and st["mismatches"] == 0, st
    reports = doc["reports"]
    assert sum(len(c.expected) for c in cases) == len(reports)
    for r in reports:      # module scope stops at each allocation: its backtrace is known
        assert r["kind"] == "freed" or r["origin"]["alloc_backtrace"], r


def test_reports_name_the_cache_the_module_created(lab):
    """SLUB may merge the module's 48-byte cache into a kernel cache: the report names the
    module's cache (and the merge), with the module's allocation call in the backtrace."""
    cases, doc = run_cases(lab, f"echo cache_alloc > {CASE_FILE}")
    (r,) = doc["reports"][-1:]
    merged, _ = lab.run(f"test -L /sys/kernel/slab/{MODULE}_obj && echo merged || echo own")
    assert r["object"]["cache"] == f"{MODULE}_obj" and r["object"]["kind"] == "slab"
    if merged.strip() == "merged":
        assert r["object"]["merged_into"] not in (None, f"{MODULE}_obj")
    else:
        assert r["object"]["merged_into"] is None
    frames = [f["symbol"] or "" for f in r["origin"]["alloc_backtrace"]]
    assert frames[0].startswith("case_cache_alloc+") and any(f.startswith("corpus_run") for f in frames)
    with Stopped(lab) as gdb:
        text = gdb.checked("kmemcheck report")
    assert f"from cache {MODULE}_obj" in text and "no allocation backtrace" not in text


def test_fast_path_without_verify(lab):
    """Verify off: at least 99 % of the corpus's tracked accesses complete in one stop."""
    with Stopped(lab) as gdb:
        gdb.checked("set kmemcheck verify off")
    try:
        before = state(lab)[0]["stats"]
        run_cases(lab, f"echo all > {CASE_FILE}")
        after = state(lab)[0]["stats"]
    finally:
        with Stopped(lab) as gdb:
            gdb.checked("set kmemcheck verify on")
    faults = after["faults"] - before["faults"]
    emulated = after["emulated"] - before["emulated"]
    assert faults > 1000 and emulated / faults >= 0.99, (emulated, faults)


def test_verify_catches_a_wrong_emulation_and_the_guest_keeps_its_own_result(lab):
    """Fault injection: the host computes a wrong rax. Verify mode reports the difference,
    naming the instruction's bytes, and the guest's own (right) value is what the code sees."""
    with Stopped(lab) as gdb:
        gdb.checked("""python
import gdbext.gdb.kmemcheck as k
E = k.KMEMCHECK.armed.engine
real = E.handle
def wrong(regs, code):
    out = real(regs, code)
    if out.regs is not None and out.text.startswith("mov eax"):
        out.regs["rax"] += 1
    return out
E.handle = wrong
end""")
    try:
        out, status = lab.run(f"echo kzalloc > {CASE_FILE}; dmesg | grep '{MODULE}: case kzalloc' | tail -1")
        assert status == 0 and "sink 0x0 done" in out, out      # zeroed memory read as zero
    finally:
        with Stopped(lab) as gdb:
            gdb.checked("python E.handle = real")
            errors = json.loads(gdb.checked("kmem errors --json").strip().splitlines()[-1])
            gdb.checked("python import gdbext.gdb.hooks as h; h.ERRORS.clear(); h.TRACEBACKS.clear()")
    assert errors and all(e.startswith("kmemcheck: verify: `mov eax") for e in errors), errors
    assert re.search(r"\(bytes [0-9a-f]+\) differs between host and guest: rax host=0x[0-9a-f]+ "
                     r"guest=0x[0-9a-f]+", errors[0]), errors[0]


def test_reload_soak(lab):
    """Load, exercise, unload, fifty times in one guest under module scope: the same reports
    every cycle, no hang, no oops, and no page left hidden."""
    with Stopped(lab) as gdb:
        gdb.checked("set kmemcheck verify off")
    lab.run(f"rmmod {MODULE} && dmesg -c > /dev/null")
    cycle = " && ".join([f"insmod /modules/{MODULE}.ko"]
                        + [f"echo {c} > {CASE_FILE}" for c in SOAK_CASES] + [f"rmmod {MODULE}"])
    before = len(state(lab)[0]["reports"])
    log = ""
    try:
        for _ in range(SOAK_CYCLES):
            out, status = lab.run(f"{cycle} && dmesg -c | grep '{MODULE}: case'", timeout=300)
            assert status == 0, out
            log += out
        doc, errors = state(lab)
        cases = parse_cases(log)
        assert errors == [] and len(cases) == SOAK_CYCLES * len(SOAK_CASES)
        stray = attribute(cases, doc["reports"][before:])
        assert mismatches(cases, stray) == []
        cycles = [[(c.name, c.reported) for c in cases[i:i + len(SOAK_CASES)]]
                  for i in range(0, len(cases), len(SOAK_CASES))]
        assert all(c == cycles[0] for c in cycles), "the same reports every cycle"
        with Stopped(lab) as gdb:
            gdb.checked("kmemcheck 0")
            assert gdb.checked("kmem pte list").startswith("0 hidden page")
            gdb.checked("set kmemcheck verify on")
            gdb.checked("kmemcheck 1")
    finally:
        lab.run(f"insmod /modules/{MODULE}.ko")
    lab.guest.check()


def test_watchdog_stops_a_fault_loop_and_shows_every_page(lab):
    """Fault injection: the fault hook stops completing accesses, so one access faults
    forever. The watchdog stops the guest, says what it was doing, shows every page, turns
    kmemcheck off; the access then completes in the guest."""
    with Stopped(lab) as gdb:
        for command in ("kmemcheck 0", "set kmemcheck verify off", "set kmemcheck watchdog 5",
                        "kmemcheck 1"):
            gdb.checked(command)
        gdb.checked(f"python exec({STUCK!r})")
    try:
        with pytest.raises(WatchdogFired, match="no progress for 5 s: the same access faulted"):
            lab.run(f"echo kzalloc > {CASE_FILE}", timeout=120)
        diagnosis = lab.gdb.await_stop(timeout=60)
        no_python_errors(diagnosis)
        assert "last handled faults" in diagnosis and "hook stops: " in diagnosis, diagnosis
        assert re.search(r"kmemcheck: off, \d+ hidden page\(s\) shown again", diagnosis)
        assert lab.gdb.checked("kmem pte list").startswith("0 hidden page")
        assert lab.gdb.checked("kmemcheck").startswith("kmemcheck: off")
    finally:
        for command in ("set kmemcheck watchdog 60", "set kmemcheck verify on", "kmemcheck 1",
                        "python import gdbext.gdb.hooks as h; h.ERRORS.clear(); h.TRACEBACKS.clear()"):
            lab.gdb.checked(command)
        lab.gdb.cont()
    out, status = lab.run(f"dmesg | grep '{MODULE}: case kzalloc' | tail -1")
    assert "sink 0x0 done" in out
    lab.guest.check()


def _run_with(monkeypatch, tmp_path, corpus_ko, code: str, *kmemcheck):
    """`kmemgdb run` on the corpus, with CODE run in gdb right after kmemcheck is on."""
    start = run_module._kmemcheck_start

    def start_and_inject(lab, spec, deadline):
        start(lab, spec, deadline)
        lab.gdb.interrupt()
        lab.gdb.checked(f"python exec({code!r})")
        lab.gdb.cont()
    monkeypatch.setattr(run_module, "_kmemcheck_start", start_and_inject)
    options = run_module.RunOptions(
        steps=[run_module.Step("insmod", f"insmod /modules/{MODULE}.ko", str(corpus_ko)),
               run_module.Step("exec", f"echo kmalloc > {CASE_FILE}", "echo kmalloc")],
        modules=[corpus_ko], json_path=tmp_path / "report.json", timeout=300,
        kmemcheck=run_module.KmemcheckSpec.parse(",".join((f"module:{MODULE}",) + kmemcheck)))
    with pytest.raises(KmemgdbError) as failure:
        run_module.run(options)
    return str(failure.value), json.loads((tmp_path / "report.json").read_text())


def test_run_fails_when_kmemcheck_failed_inside_a_hook(monkeypatch, tmp_path, corpus_ko):
    """A checker that failed inside a hook did not check everything: exit 2, never clean."""
    message, doc = _run_with(monkeypatch, tmp_path, corpus_ko, """
import gdbext.gdb.kmemcheck as k
k.KMEMCHECK.armed.engine.handle = lambda *a: 1 // 0
""")
    assert "failed inside its hooks" in message and "internal error" in message
    assert doc["steps"] and all(s["exit_status"] == 0 for s in doc["steps"])
    assert "ZeroDivisionError" in doc["hook_errors"][0]


def test_run_stops_with_the_watchdog_diagnosis_instead_of_hanging(monkeypatch, tmp_path, corpus_ko):
    message, doc = _run_with(monkeypatch, tmp_path, corpus_ko, STUCK, "watchdog=5")
    assert "kmemcheck watchdog: no progress for 5 s" in message
    assert "last handled faults" in message and "shown again" in message
    assert "kmemcheck watchdog" in doc["error"]
