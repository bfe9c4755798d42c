"""Host-side kmemcheck on the real guest, with the acceptance module kmemgdb_check: each case
does one known access on objects of the module's own caches (tests/modules/kmemgdb_check)."""
from __future__ import annotations

import json
import re

import pytest

from kmemgdb.guestlab import LabOptions, booted
from kmemgdb.modbuild import build_module

from .conftest import REPO, Stopped, expect_errors, no_python_errors

CHECK_SRC = REPO / "tests" / "modules" / "kmemgdb_check"
CACHE = "kmemgdb_check"


@pytest.fixture(scope="module")
def check_ko(kernel_build):
    return build_module(kernel_build, CHECK_SRC)[0]


@pytest.fixture(scope="module")
def clab(check_ko, tmp_path_factory):
    """A guest with a 4 KiB direct map and SLUB user tracking of the module's cache."""
    opts = LabOptions(modules=[check_ko], append=["debug_pagealloc=on", f"slub_debug=U,{CACHE}"])
    with booted(opts, tmp_path_factory.mktemp("kmemcheck")) as lab:
        out, status = lab.run("insmod /modules/kmemgdb_check.ko")
        assert status == 0, out
        with Stopped(lab) as gdb:
            gdb.checked(f"kmemcheck track cache {CACHE}")
            gdb.checked("set kmemcheck verify on")      # every host completion checked
            out = gdb.checked("kmemcheck 1")
            assert "kmemcheck: on, tracking cache kmemgdb_check" in out, out
        yield lab


def reports(lab) -> list[dict]:
    with Stopped(lab) as gdb:
        out = gdb.checked("kmemcheck report --json")
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])["reports"]


def run_case(lab, case: str) -> tuple[list[dict], str]:
    """Run one module case; returns the reports it produced and its log line."""
    before = len(reports(lab))
    out, status = lab.run(f"echo {case} > /sys/kernel/debug/kmemgdb_check; "
                          f"dmesg | grep 'kmemgdb_check: {case.split()[0]} ' | tail -1", timeout=120)
    assert status == 0 and "done" in out, out
    return reports(lab)[before:], out


def hidden_pages(gdb) -> list[int]:
    """The pages `kmem pte list` says are hidden."""
    listing = gdb.checked("kmem pte list")
    return [int(p, 16) for p in re.findall(r"^\s+0x([0-9a-f]+)", listing, re.M)]


def address(line: str, name: str) -> int:
    return int(re.search(rf"{name} ([0-9a-f]+)", line).group(1), 16)


@pytest.mark.parametrize("case, size, offset, field", [
    ("uninit8", 1, 0, "flag8"), ("uninit16", 2, 2, "val16"),
    ("uninit32", 4, 4, "val32"), ("uninit64", 8, 8, "val64"),
])
def test_uninitialized_read_names_size_offset_field_and_origin(clab, case, size, offset, field):
    found, line = run_case(clab, case)
    assert len(found) == 1, found
    r = found[0]
    obj = address(line, "obj")
    assert (r["kind"], r["access"], r["size"]) == ("uninitialized", "read", size)
    assert r["address"] == obj + offset and r["object"]["address"] == obj
    assert r["object"]["offset"] == offset and r["object"]["cache"] == CACHE
    assert r["field"]["path"] == f"struct check_req.{field}" and not r["padding"]
    assert r["symbol"].startswith(f"kmemgdb_check_read_{field}+0x") and r["module"] == CACHE
    assert r["file"].endswith("kmemgdb_check.c") and r["line"]
    # Frames are named the kernel's way: the function holding the code (inlined callees of
    # kmemgdb_check_case_* do not get frames of their own).
    caller = f"kmemgdb_check_case_{case}"
    assert [f["symbol"].split("+")[0].split(".")[0] for f in r["backtrace"][1:3]] == [
        caller, "kmemgdb_check_write"], r["backtrace"]
    assert r["origin"]["address"] == obj
    assert any(caller in (f["symbol"] or "") for f in r["origin"]["alloc_backtrace"]), r["origin"]


@pytest.mark.parametrize("case", ["zeroed", "memset", "loop 50"])
def test_initialized_objects_give_no_report(clab, case):
    found, _ = run_case(clab, case)
    assert found == []


def test_partially_initialized_struct_reports_only_the_missing_field(clab):
    found, line = run_case(clab, "partial")
    assert [(r["field"]["path"], r["size"]) for r in found] == [("struct check_req.timeout", 4)]
    assert found[0]["address"] == address(line, "obj") + 16


def test_memcpy_carries_uninitialized_bytes_and_their_origin(clab):
    found, line = run_case(clab, "memcpy")
    src, dst = address(line, "src"), address(line, "dst")
    assert len(found) == 1, found
    r = found[0]
    assert r["address"] == dst + 16 and r["field"]["path"] == "struct check_req.timeout"
    assert r["object"]["address"] == dst
    assert r["origin"]["address"] == src, "the uninitialized bytes came from the source object"


def test_padding_copied_out_is_reported_as_padding_with_the_field_map(clab):
    found, line = run_case(clab, "padding")
    assert len(found) == 1, found
    r = found[0]
    obj = address(line, "obj")
    assert r["padding"] and r["field"]["kind"] == "padding"
    assert "padding between timeout and tail" in r["field"]["text"]
    assert r["first_bad"] == obj + 20 and r["copy_to"] is not None and r["copy_size"] == 32
    assert r["instruction"].startswith("rep movsb") and r["size"] == 1
    with Stopped(clab) as gdb:
        text = gdb.checked("kmemcheck report")
    assert "object field map" in text and "timeout" in text


def test_read_after_free_is_reported_as_freed(clab):
    found, line = run_case(clab, "uaf")
    assert [(r["kind"], r["access"], r["size"]) for r in found] == [("freed", "read", 4)]
    assert found[0]["address"] == address(line, "obj") + 4


def test_notrack_cache_is_not_reported(clab):
    with Stopped(clab) as gdb:
        gdb.checked("kmemcheck track cache kmemgdb_check*")
        gdb.checked("kmemcheck notrack cache kmemgdb_check_notrack")
        assert "(not: cache kmemgdb_check_notrack)" in gdb.checked("kmemcheck")
    found, _ = run_case(clab, "notrack")
    assert found == []
    with Stopped(clab) as gdb:
        gdb.checked("kmemcheck notrack cache kmemgdb_check*")
        gdb.checked(f"kmemcheck track cache {CACHE}")


def test_module_scope_tracks_what_the_module_allocates(clab):
    """track module: the module's kmalloc(32) (kmalloc-32, a cache shared with the whole
    kernel) is watched, other kmalloc-32 objects on the same pages are not reported."""
    with Stopped(clab) as gdb:
        gdb.checked("kmemcheck 0")
        gdb.checked(f"kmemcheck notrack cache {CACHE}")
        gdb.checked("kmemcheck track module kmemgdb_check")
        assert "kmemcheck: on, tracking module kmemgdb_check" in gdb.checked("kmemcheck 1")
    try:
        found, line = run_case(clab, "kmalloc32")
        assert [(r["kind"], r["size"], r["object"]["cache"]) for r in found] == [
            ("uninitialized", 4, "kmalloc-32")]
        assert found[0]["object"]["address"] == address(line, "obj")
        assert found[0]["field"]["path"] == "struct check_req.val32"
        assert run_case(clab, "kzalloc")[0] == []
        found, _ = run_case(clab, "uninit16")              # kmem_cache_alloc by the module
        assert [r["field"]["path"] for r in found] == ["struct check_req.val16"]
        before = len(reports(clab))
        out, status = clab.run("ls /sys/kernel/slab > /dev/null && echo ok", timeout=120)
        assert status == 0 and "ok" in out
        assert len(reports(clab)) == before        # other objects on those pages: not reported
    finally:
        with Stopped(clab) as gdb:
            gdb.checked("kmemcheck 0")
            gdb.checked("kmemcheck notrack module kmemgdb_check")
            gdb.checked(f"kmemcheck track cache {CACHE}")
            gdb.checked("kmemcheck 1")


def test_shadow_command_and_status(clab):
    with Stopped(clab) as gdb:
        status = gdb.checked("kmemcheck")
        pages = int(re.search(r"hidden pages: (\d+)", status).group(1))
        assert pages >= 1 and "fast path" in status
        page = int(re.search(r"0x([0-9a-f]+)", gdb.checked("kmem pte list").split("\n", 1)[1]).group(1), 16)
        shadow = gdb.checked(f"kmemcheck shadow {page:#x} 64")
    assert re.search(r"^0x[0-9a-f]{16}: [auif.]{32}$", shadow, re.M), shadow


def test_bad_input_gives_one_line_errors(clab):
    with Stopped(clab) as gdb:
        expect_errors(gdb, [
            ("kmemcheck 3", "unknown argument '3'"),
            ("kmemcheck track", "the following arguments are required"),
            ("kmemcheck track cache", "cache needs a NAME"),
            ("kmemcheck shadow", "the following arguments are required"),
            ("kmemcheck shadow 0x1000 0", "LEN must be between"),
            ("kmemcheck suppress bogus", "bad suppression 'bogus'"),
            ("set kmemcheck shadow-window 40", "between 2 and 8"),
        ])


def test_one_shot_reports_once_then_turns_off_and_shows_pages(clab):
    with Stopped(clab) as gdb:
        gdb.checked("kmemcheck 0")
        assert "kmemcheck: one-shot" in gdb.checked("kmemcheck 2")
    before = len(reports(clab))
    for case in ("uninit8", "uninit16", "uninit32"):
        clab.run(f"echo {case} > /sys/kernel/debug/kmemgdb_check")
    assert len(reports(clab)) == before + 1
    with Stopped(clab) as gdb:
        status = gdb.checked("kmemcheck")
        assert status.startswith("kmemcheck: off") and "hidden pages: 0" in status
        assert gdb.checked("kmem pte list").startswith("0 hidden page")
        gdb.checked("kmemcheck 1")


def test_bitfield_ok_hides_bitfield_storage_reads(clab):
    found, _ = run_case(clab, "bitfield")
    assert found == []
    with Stopped(clab) as gdb:
        gdb.checked("set kmemcheck bitfield-ok off")
    try:
        found, line = run_case(clab, "bitfield")
    finally:
        with Stopped(clab) as gdb:
            gdb.checked("set kmemcheck bitfield-ok on")
    assert len(found) == 1, found
    r = found[0]
    assert r["field"]["kind"] == "bitfield" and "mode" in r["field"]["text"], r["field"]
    assert (r["size"], r["address"]) == (1, address(line, "obj"))


def test_suppression_by_field(clab):
    with Stopped(clab) as gdb:
        gdb.checked("kmemcheck suppress field=check_req.val16")
    try:
        assert run_case(clab, "uninit16")[0] == []
        assert len(run_case(clab, "uninit8")[0]) == 1
    finally:
        with Stopped(clab) as gdb:
            gdb.checked("kmemcheck suppress --clear")


def kmemgdb_run(*args, timeout=300):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "kmemgdb.cli", "run", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_kmemgdb_run_reports_text_and_json(tmp_path, check_ko):
    report = tmp_path / "r.json"
    case = lambda c: f"echo {c} > /sys/kernel/debug/kmemgdb_check"
    res = kmemgdb_run("--insmod", check_ko, "--exec", case("uninit32"), "--exec", case("zeroed"),
                      "--exec", case("padding"), "--kmemcheck", f"cache:{CACHE}", "--json", report)
    assert res.returncode == 1, res.stderr
    assert "WARNING: kmemcheck: Caught 32-bit read from uninitialized memory" in res.stdout
    assert "accessed: struct check_req.val32" in res.stdout
    doc = json.loads(report.read_text())
    section = doc["kmemcheck"]
    assert section["enabled"] and section["stats"]["faults"] > 0
    assert [(r["kind"], r["size"], r["field"]["path"]) for r in section["reports"]] == [
        ("uninitialized", 4, "struct check_req.val32"),
        ("uninitialized", 1, section["reports"][1]["field"]["path"])]
    first, padding = section["reports"]
    assert first["module"] == CACHE and first["object"]["cache"] == CACHE
    assert first["object"]["alloc_backtrace"], "run boots with slub_debug=U for the tracked cache"
    assert padding["padding"] and padding["copy_to"] is not None
    assert "debug_pagealloc=on" in doc["guest"]["command_line"]


def test_kmemgdb_run_clean_module_exits_0(tmp_path, check_ko):
    res = kmemgdb_run("--insmod", check_ko, "--exec",
                      "echo zeroed > /sys/kernel/debug/kmemgdb_check", "--kmemcheck",
                      f"cache:{CACHE},oneshot")
    assert res.returncode == 0, res.stderr + res.stdout
    assert "kmemcheck: 0 report(s)" in res.stdout


def test_off_shows_every_page_and_the_guest_runs_on(clab):
    from gdbext.core import paging
    from gdbext.core.memory import RamFileMemory
    with Stopped(clab) as gdb:
        pages = hidden_pages(gdb)
        cr3 = int(gdb.checked("p/x (unsigned long)$cr3").split("=")[1], 16)
        assert pages
        out = gdb.checked("kmemcheck 0")
        assert f"{len(pages)} hidden page(s) shown again" in out
    ram = RamFileMemory(clab.guest.ram_path)
    try:
        still_hidden = [p for p in pages if not paging.find_pte(ram, cr3, p).present]
    finally:
        ram.close()
    assert still_hidden == []
    out, status = clab.run("ls -R /sys > /dev/null; echo 1 > /sys/kernel/debug/kmemgdb_check || true; "
                           "echo uninit32 > /sys/kernel/debug/kmemgdb_check && echo ok", timeout=120)
    assert status == 0 and "ok" in out
    clab.guest.check()


def test_internal_error_turns_off_shows_pages_and_the_access_completes(clab):
    """Fault injection: the engine raises inside the fault hook. The hook must not leave the
    guest faulting on a hidden page: kmemcheck turns off, every page is shown again, and the
    interrupted read completes in the guest."""
    with Stopped(clab) as gdb:
        gdb.checked("kmemcheck 1")
        gdb.checked("python import gdbext.gdb.kmemcheck as k; "
                    "k.KMEMCHECK.engine.handle = lambda *a: 1 // 0")
    out, status = clab.run("echo uninit32 > /sys/kernel/debug/kmemgdb_check && "
                           "dmesg | grep 'kmemgdb_check: uninit32 ' | tail -1", timeout=120)
    assert status == 0 and "done" in out, out
    printed = clab.gdb.interrupt()       # with what gdb printed while the guest ran
    try:
        assert "kmemcheck: turned off after an internal error" in printed, printed
        assert "ZeroDivisionError" in printed or "division" in printed, printed
        no_python_errors(printed)
        state = clab.gdb.checked("kmemcheck")
        assert state.startswith("kmemcheck: off") and "hidden pages: 0" in state, state
        assert clab.gdb.checked("kmem pte list").startswith("0 hidden page")
        clab.gdb.checked("kmemcheck 1")      # a new engine: the injected fault is gone
    finally:
        clab.gdb.cont()
    found, _ = run_case(clab, "uninit32")
    assert len(found) == 1


INTERRUPT_ONCE = """
import gdbext.gdb.kmemcheck as k
import gdbext.gdb.target as target
owner = {owner}
real, calls = owner.{name}, []
def once(*args):
    calls.append(1)
    if len(calls) == 1:
        raise KeyboardInterrupt
    return real(*args)
owner.{name} = once
"""


@pytest.mark.parametrize("owner, name", [
    ("k.KMEMCHECK.engine", "handle"),   # while deciding: nothing changed in the guest yet
    ("target", "set_pc"),               # the last step of the guest changes: resumed
])
def test_ctrl_c_inside_the_fault_hook_finishes_the_access_then_stops(clab, owner, name):
    """gdb turns a Ctrl-C that arrives while a hook runs into KeyboardInterrupt there. Injected
    at two points of a tracked fault, the hook still completes the access, the guest stops as
    asked, and it goes on correctly afterwards."""
    with Stopped(clab) as gdb:
        gdb.checked(f"python exec({INTERRUPT_ONCE.format(owner=owner, name=name)!r})")
    before = len(reports(clab))
    case = clab.guest.start_command("echo uninit32 > /sys/kernel/debug/kmemgdb_check")
    stop = clab.gdb.wait_stop(timeout=60)
    no_python_errors(stop)
    assert "Ctrl-C inside the kmemcheck hook" in stop and "the guest stopped at" in stop, stop
    clab.gdb.cont()
    assert case.wait(60)[1] == 0
    found = reports(clab)[before:]
    assert [(r["kind"], r["size"]) for r in found] == [("uninitialized", 4)], found
    with Stopped(clab) as gdb:
        gdb.checked(f"python {owner}.{name} = real")


def test_off_while_a_fault_is_on_its_way_to_the_hook(clab):
    """The guest stopped inside the page-fault entry for a fault on a hidden page: turning
    kmemcheck off there must not hand the kernel a not-present fault on a now-present page
    (an oops). kmemcheck steps the vCPU through its hook first."""
    with Stopped(clab) as gdb:
        gdb.checked("kmemcheck 1")
        pages = hidden_pages(gdb)
        assert pages
        on_page = " || ".join(f"((unsigned long)$cr2 >> 12) == {p >> 12:#x}" for p in pages)
        gdb.checked(f"break *asm_exc_page_fault if {on_page}")
    before = len(reports(clab))
    case = clab.guest.start_command("echo uninit32 > /sys/kernel/debug/kmemgdb_check")
    try:
        assert "asm_exc_page_fault" in clab.gdb.wait_stop(timeout=60)
        clab.gdb.checked("delete")
        out = clab.gdb.checked("kmemcheck 0")
        assert "hidden page(s) shown again" in out, out
        assert clab.gdb.checked("kmem pte list").startswith("0 hidden page")
    finally:
        clab.gdb.cont()
    assert case.wait(60)[1] == 0          # no oops: check() inside wait() would say
    assert len(reports(clab)) == before   # the allocator's access was the one in flight
    with Stopped(clab) as gdb:
        gdb.checked("kmemcheck 1")


def test_detach_turns_kmemcheck_off_and_shows_every_page(clab):
    from gdbext.core import paging
    from gdbext.core.memory import RamFileMemory
    with Stopped(clab) as gdb:
        assert "page(s) hidden" in gdb.checked("kmemcheck 1")
        pages = hidden_pages(gdb)
        cr3 = int(gdb.checked("p/x (unsigned long)$cr3").split("=")[1], 16)
        out = gdb.checked("detach")
        assert "kmemcheck: off" in out and f"{len(pages)} hidden page(s) shown again" in out
        ram = RamFileMemory(clab.guest.ram_path)
        try:
            assert pages and all(paging.find_pte(ram, cr3, p).present for p in pages)
        finally:
            ram.close()
        gdb.connect(clab.guest.port)
        assert gdb.checked("kmemcheck").startswith("kmemcheck: off")
    out, status = clab.run("echo uninit32 > /sys/kernel/debug/kmemgdb_check && echo ok")
    assert status == 0 and "ok" in out


def test_verify_found_the_host_agreeing_with_the_guest(clab):
    """Every test of this module ran with verify on; the kmemcheck ones are checked here for
    mismatches (kept across turn-offs), and a few cases once more on a running engine."""
    with Stopped(clab) as gdb:
        gdb.checked("kmemcheck 1")
    for case in ("uninit32", "memcpy", "padding", "partial", "loop 20", "bitfield"):
        run_case(clab, case)
    with Stopped(clab) as gdb:
        status = gdb.checked("kmemcheck")
        errors = gdb.checked("kmem errors")
    verified, mismatches = map(int, re.search(r"verified against the guest: (\d+), mismatches: "
                                              r"(\d+)", status).groups())
    assert verified >= 20 and mismatches == 0, status
    assert "verify" not in errors, errors


def test_needs_a_4k_direct_map(lab):
    """The default guest (no debug_pagealloc) maps the direct map with 2 MiB pages."""
    with Stopped(lab) as gdb:
        gdb.checked("kmemcheck track cache kmalloc-64")
        out = gdb.cmd("kmemcheck 1")
        no_python_errors(out)
        assert "boot it with debug_pagealloc=on" in out and len(out.strip().splitlines()) == 1
        assert gdb.checked("kmem pte list").startswith("0 hidden page")
