"""Leak reports of `kmemgdb run --kmemleak` on a driver-shaped module: every allocation site
named, annotations honoured, heap bugs and the kernel's own reports as findings, reports that
survive an oops, and error-path leaks found by failing allocations from the host."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kmemgdb.modbuild import build_module

REPO = Path(__file__).resolve().parents[2]
EXPECT = re.compile(r"kmemgdb_leaks: (\w+) = ([0-9a-f]+) expect (leak|no-leak)")


@pytest.fixture(scope="module")
def leaks_ko(kernel_build):
    return build_module(kernel_build, REPO / "tests" / "modules" / "kmemgdb_leaks")[0]


@pytest.fixture(scope="module")
def errpath_ko(kernel_build):
    return build_module(kernel_build, REPO / "tests" / "modules" / "kmemgdb_errpath")[0]


def kmemgdb_run(tmp_path, *args, timeout=600):
    report = tmp_path / "report.json"
    res = subprocess.run([sys.executable, "-m", "kmemgdb.cli", "run", *map(str, args),
                          "--json", str(report)], capture_output=True, text=True,
                         timeout=timeout, cwd=REPO)
    assert "Traceback" not in res.stderr, res.stderr
    return res, json.loads(report.read_text())


def expectations(doc) -> dict[str, tuple[int, bool]]:
    return {name: (int(addr, 16), want == "leak") for name, addr, want in EXPECT.findall(doc["console"])}


def containing(doc, addr: int) -> dict | None:
    """The reported leak (direct or indirect) holding ADDR."""
    return next((l for l in doc["kmemleak"]["leaks"]
                 if l["address"] <= addr < l["address"] + l["size"]), None)


def module_frames(leak) -> list[str]:
    return [f["symbol"].split("+")[0] for f in leak["backtrace"] if f["module"] == "kmemgdb_leaks"]


def test_every_module_leak_names_its_allocation_site(tmp_path, leaks_ko):
    res, doc = kmemgdb_run(tmp_path, "--kmemleak", "--insmod", leaks_ko,
                           "--exec", "echo leak | dd of=/sys/kernel/debug/kmemgdb_leaks")
    assert res.returncode == 1, res.stderr
    assert {"slub_debug=U,kmalloc-*", "page_owner=on"} <= set(doc["guest"]["command_line"].split())
    expected = expectations(doc)
    assert len(expected) == 16
    # Direct or indirect (a stale free pointer in a leaked neighbour may make one indirect, a
    # devres hangs from its device); devm_kzalloc() returns a pointer into its devres node.
    for name, (addr, is_leak) in expected.items():
        leak = containing(doc, addr)
        assert (leak is not None) == is_leak, f"{name} at {addr:#x}: expected leak={is_leak}"
        if not is_leak:
            continue
        # Both tasks exited before the scan: insmod seen at the module load stop, dd named
        # from the page allocator's records.
        task = "dd" if name == "write_leak" else "insmod"
        assert (leak["comm"], leak["pid"] is not None) == (task, True), name
        assert module_frames(leak), f"{name}: no frame in the module: {leak['backtrace']}"
    leak = lambda name: containing(doc, expected[name][0])
    assert leak("private_cache")["cache"] == "kmemgdb_leaks_req"
    assert module_frames(leak("private_cache"))[0].startswith("leaks_new_req")
    assert module_frames(leak("krealloc"))[0] == "leaks_grow"
    managed = [f["symbol"].split("+")[0] for f in leak("devm_kzalloc")["backtrace"]]
    assert managed.index("devm_kmalloc") < managed.index("leaks_make")   # a tail call from leaks_managed
    assert leak("large_kmalloc")["object_kind"] == "large kmalloc"
    assert leak("vzalloc")["object_kind"] == "vmalloc"
    # kmemleak_update_trace(): the backtrace is the update's, not kmalloc's.
    assert leak("update_trace")["backtrace"][0]["symbol"].startswith("leaks_make+")
    assert not any("no kmemleak annotations" in n for n in doc["kmemleak"]["notes"])
    assert "unreferenced object" in res.stdout and "leaks_new_req" in res.stdout


def test_backtraces_can_be_turned_off(tmp_path, leaks_ko):
    res, doc = kmemgdb_run(tmp_path, "--kmemleak", "--no-backtraces", "--insmod", leaks_ko)
    assert res.returncode == 1, res.stderr
    assert "slub_debug" not in doc["guest"]["command_line"]
    traced = expectations(doc)["update_trace"][0]    # kmemleak_update_trace() gives its own
    slab = [l for l in doc["kmemleak"]["leaks"] if l["object_kind"] == "slab"]
    assert [l["address"] for l in slab if l["backtrace"]] == [traced]
    # Untracked, SLUB merges the module's cache into another one: the report says so.
    private = containing(doc, expectations(doc)["private_cache"][0])
    assert private["cache"] != "kmemgdb_leaks_req" and "kmemgdb_leaks_req" in private["cache_aliases"]
    assert "(merged with " in res.stdout and "kmemgdb_leaks_req" in res.stdout


def test_double_free_is_a_finding_with_both_backtraces(tmp_path, leaks_ko):
    res, doc = kmemgdb_run(tmp_path, "--kmemleak", "--insmod", leaks_ko,
                           "--exec", "echo double_free > /sys/kernel/debug/kmemgdb_leaks")
    assert res.returncode == 1, res.stderr
    address = int(re.search(r"double_free = ([0-9a-f]+)", doc["console"]).group(1), 16)
    [finding] = doc["kmemleak"]["heap_findings"]
    assert (finding["kind"], finding["cache"], finding["address"]) == (
        "double free", "kmemgdb_leaks_df", address)
    assert finding["alloc"]["backtrace"][0]["symbol"].startswith("leaks_double_free+")
    assert finding["free"]["backtrace"] and finding["free"]["comm"] == "sh"
    assert f"double free: object {address:#x} in cache kmemgdb_leaks_df" in res.stdout


def test_slub_redzone_overwrite_is_a_kernel_report(tmp_path, leaks_ko):
    res, doc = kmemgdb_run(tmp_path, "--kmemleak", "--append", "slub_debug=FZP", "--insmod",
                           leaks_ko, "--exec", "echo overflow > /sys/kernel/debug/kmemgdb_leaks")
    assert res.returncode == 1, res.stderr
    assert "slub_debug=FZPU" in doc["guest"]["command_line"].split()
    slub = [r for r in doc["kernel_reports"] if r["kind"] == "slub"]
    assert slub and slub[0]["cache"] == "kmalloc-32" and "Redzone" in slub[0]["title"], doc["kernel_reports"]
    assert "leaks_overflow" in slub[0]["text"]
    assert "kernel slub report" in res.stdout


def test_reports_survive_an_oops_in_module_init(tmp_path, leaks_ko):
    # init_on_alloc=1: no object keeps SLUB's free pointer in bytes its owner never wrote, the
    # stale references a conservative scan (the in-kernel kmemleak's too) counts; then every
    # leak of the crashed init must be reported.
    res, doc = kmemgdb_run(tmp_path, "--kmemleak", "--append", "init_on_alloc=1",
                           "--insmod", f"{leaks_ko} crash_in_init=1")
    assert res.returncode == 1, res.stderr
    [step] = doc["steps"]
    assert step["exit_status"] is None and "NULL pointer dereference" in step["kernel_crash"]
    assert [r["kind"] for r in doc["kernel_reports"]] == ["oops"]
    assert doc["kernel_reports"][0]["comm"] == "insmod"
    expected = {name: a for name, (a, is_leak) in expectations(doc).items() if is_leak}
    missed = {name for name, a in expected.items() if containing(doc, a) is None}
    assert not missed
    assert "crashed the guest kernel" in res.stderr


def test_reports_survive_a_panic(tmp_path, leaks_ko):
    """panic=0: the panicking guest stays, stopped by kmemgdb, and is scanned."""
    res, doc = kmemgdb_run(tmp_path, "--kmemleak", "--insmod", f"{leaks_ko} panic_in_init=1")
    assert res.returncode == 1, res.stderr
    assert [r["kind"] for r in doc["kernel_reports"]] == ["panic"]
    assert "asked to panic" in doc["kernel_reports"][0]["title"]
    leaked = {l["address"] for l in doc["kmemleak"]["leaks"]}
    assert expectations(doc)["private_cache"][0] in leaked


def test_fail_alloc_sweep_finds_the_error_path_leak(tmp_path, errpath_ko):
    res, doc = kmemgdb_run(tmp_path, "--kmemleak", "--insmod", errpath_ko,
                           "--fail-alloc-sweep", "module:kmemgdb_errpath", timeout=900)
    assert res.returncode == 1, res.stderr
    runs = doc["fail_alloc_sweep"]["runs"]
    # Four allocations in the init: each fails once, then a run where nothing is left to fail.
    assert [r["nth"] for r in runs] == [1, 2, 3, 4, 5]
    assert [r["injected"] is not None for r in runs] == [True] * 4 + [False]
    assert runs[1]["injected"]["function"] == "kstrdup"
    direct = [[l for l in r["kmemleak"]["leaks"] if l["kind"] == "direct"] for r in runs]
    assert [len(d) for d in direct] == [0, 0, 0, 2, 0]
    assert all(any(f["symbol"].startswith("errpath_setup+") for f in l["backtrace"]) for l in direct[3])
    # busybox insmod loads the module again with init_module() after a failed finit_module():
    # the first load stops at its Nth call, the second makes all 4 and the module is live.
    assert [r["calls"] for r in runs] == [5, 6, 7, 8, 4]
    assert "N=4: kmalloc_trace() fails: 2 leak(s)" in res.stdout
