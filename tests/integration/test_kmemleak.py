"""Host-side kmemleak on the real guest through interactive gdb."""
import json
import re
import time

import pytest

from .conftest import Stopped, expect_errors, refused_while_running

ALLOC = re.compile(r"kmemleak: (kmalloc\((\d+)\)|vmalloc\(64\)|kzalloc\(sizeof\(\*elem\)\)) = ([0-9a-f]+)")


def report(gdb, *flags) -> dict:
    out = gdb.checked("kmemleak report --json " + " ".join(flags))
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])


def scan(gdb) -> str:
    out = gdb.checked("kmemleak scan", timeout=120)
    assert re.search(r"\d+ objects scanned in \d+ ms", out), out
    return out


def printed_allocations(console: str, since: int = 0) -> dict[int, str]:
    """address -> what kmemleak-test.ko says it allocated there (its pr_info lines)."""
    return {int(m.group(3), 16): m.group(1) for m in ALLOC.finditer(console[since:])}


def scan_and_clear(lab) -> None:
    """Boot leftovers cleared, as kernel developers do after boot."""
    with Stopped(lab) as gdb:
        scan(gdb)
        gdb.checked("kmemleak clear")


@pytest.fixture(scope="module")
def cleared(lab):
    scan_and_clear(lab)
    return lab


def test_no_false_positives_after_a_clean_module_and_a_workload(cleared):
    lab = cleared
    since = len(lab.guest.console.text)
    lab.run("insmod /modules/kmemgdb_hello.ko")
    held = int(re.search(r"bss-held object at ([0-9a-f]+)", lab.guest.console.text[since:]).group(1), 16)
    with Stopped(lab) as gdb:
        scan(gdb)
        assert report(gdb, "--all")["leaks"] == []      # incl. the .bss interior pointer's object
        assert ".bss" in gdb.checked(f"kmemleak why {held:#x}") or "module kmemgdb_hello data" in \
            gdb.checked(f"kmemleak why {held:#x}")
    for command in ("echo 1 > /sys/kernel/debug/kmemgdb_hello",
                    "rmmod kmemgdb_hello", "ls -R /sys > /dev/null", "cat /proc/*/status > /dev/null",
                    "for i in 1 2 3; do sleep 0.1 & done; wait", "mkdir -p /tmp/x && echo hi > /tmp/x/f && rm -r /tmp/x"):
        _, status = lab.run(command, timeout=120)
        assert status == 0, command
    with Stopped(lab) as gdb:
        scan(gdb)
        leaks = report(gdb, "--all")["leaks"]
        assert leaks == [], gdb.checked("kmemleak report --all")


def leak_module(lab) -> None:
    _, status = lab.run("insmod /modules/kmemleak-test.ko && rmmod kmemleak_test")
    assert status == 0


def test_why_dump_and_suppressions(cleared, tmp_path):
    lab = cleared
    leak_module(lab)
    with Stopped(lab) as gdb:
        scan(gdb)
        leaks = report(gdb)["leaks"]
        assert len(leaks) >= 10
        addr = leaks[0]["address"]
        assert "is unreferenced: a direct leak" in gdb.checked(f"kmemleak why {addr + 8:#x}")
        dump = gdb.checked(f"kmemleak dump={addr + 4:#x}")
        assert f"object {addr:#x}" in dump and "unreferenced (direct leak)" in dump
        assert "hex dump" in dump and "offset of" in dump
        sup = tmp_path / "sup.txt"
        sup.write_text(gdb.checked("kmemleak suppressions generate"))
        assert "cache=" in sup.read_text() or "module=" in sup.read_text()
        assert "loaded" in gdb.checked(f"kmemleak suppress {sup}")
        after = report(gdb, "--all")
        assert after["leaks"] == [] and after["suppressed"] >= len(leaks)
        gdb.checked("kmemleak suppressions clear")
        assert len(report(gdb)["leaks"]) == len(leaks)
        gdb.checked("kmemleak clear")
        assert report(gdb, "--all")["leaks"] == []


def test_mark_and_new(cleared):
    lab = cleared
    leak_module(lab)
    with Stopped(lab) as gdb:
        scan(gdb)
        before = {l["address"] for l in report(gdb, "--all")["leaks"]}
        assert before
        assert "mark set" in gdb.checked("kmemleak mark")
        assert report(gdb, "--new", "--all")["leaks"] == []
    leak_module(lab)
    with Stopped(lab) as gdb:
        scan(gdb)
        new = {l["address"] for l in report(gdb, "--new", "--all")["leaks"]}
        everything = {l["address"] for l in report(gdb, "--all")["leaks"]}
    # Without SLUB user tracking an address reused since the mark looks old, so `new` may miss
    # a few of the second round's leaks, never list an old one.
    assert len(new) >= 10 and not new & before and new <= everything


def test_why_of_a_referenced_object_ends_at_a_root(lab):
    with Stopped(lab) as gdb:
        scan(gdb)
        task = gdb.checked("p/x (unsigned long)init_task.tasks.next").split("=")[1].strip()
        out = gdb.checked(f"kmemleak why {task}")
        assert re.search(r"<- root (\.data|\.bss|per-CPU|stack|boot-time)", out), out


def test_options_and_bad_input(lab):
    with Stopped(lab) as gdb:
        expect_errors(gdb, [
            ("kmemleak stack=off", "are not scanned"), ("kmemleak stack=on", "are scanned"),
            ("kmemleak age=on", "age rule on"), ("kmemleak age=off", "age rule off"),
            ("kmemleak stack=maybe", "expected on or off"),
            ("kmemleak frobnicate", "unknown command 'frobnicate'"),
            ("kmemleak dump=0x1234", "not inside a heap object"),
            ("kmemleak dump=&init_task", "not inside a heap object"),
            ("kmemleak why", "the following arguments are required"),
            ("kmemleak suppress /nonexistent/file", "No such file"),
        ], one_line=False)
        refused_while_running(gdb, "kmemleak scan")
        assert "hooks off" in gdb.checked("kmemleak hooks=off")
        assert "annotation hooks on" in gdb.checked("kmemleak hooks=on")
        assert "guest hooks removed" in gdb.checked("kmemleak off")
        assert "kmemleak is off" in gdb.cmd("kmemleak scan")
        assert "kmemleak: on" in gdb.checked("kmemleak on")
        assert "objects scanned" in gdb.checked("kmemleak scan")


# The first free object of kmemgdb_hello_cache, on its slab's or its CPU's freelist (a cache
# only the test module uses, so corrupting it for a moment endangers nothing else).
FIND_FREE_POINTER = """python
from gdbext.gdb.heapctx import guest_context
from gdbext.core.heap.slub import SlubWalker, read_caches, swab64
ctx = guest_context(); mm = ctx.memmap(); w = SlubWalker(ctx, mm)
cache = [c for c in read_caches(ctx) if c.name == "kmemgdb_hello_cache"][0]
heads = [int(mm[p, w.w_freelist]) for p in w.slab_pfns().tolist() if int(mm[p, w.w_cache]) == cache.address]
heads += [h for s, h in w.cpu_freelists([cache]).items()]
head = [h for h in heads if h][0]
where = head + cache.offset
# What makes the pointer stored at WHERE point at HEAD itself (hardened: obfuscated as SLUB does).
self_loop = head ^ cache.random ^ swab64(where) if cache.random else head
print("FREEPTR", hex(where), hex(head), hex(ctx.u64(where)), hex(self_loop))
end"""


@pytest.fixture
def hello_loaded(lab):
    _, status = lab.run("insmod /modules/kmemgdb_hello.ko")
    assert status == 0
    yield
    lab.run("rmmod kmemgdb_hello")


@pytest.mark.parametrize("bad", ["0xffff888000000008", "self"])
def test_corrupted_freelist_is_reported_not_fatal(lab, hello_loaded, bad):
    with Stopped(lab) as gdb:
        _, where, head, value, self_loop = re.search(r"FREEPTR (\S+) (\S+) (\S+) (\S+)",
                                                     gdb.checked(FIND_FREE_POINTER)).group(0).split()
        garbage = self_loop if bad == "self" else bad
        gdb.checked(f"set *(unsigned long *){where} = {garbage}")
        try:
            out = scan(gdb)
            kind = "double free" if bad == "self" else "corrupted freelist"
            assert f"kmemleak: {kind}:" in out and ("loops" in out if bad == "self" else "is not an object" in out)
            assert f"{kind}: object {head}" in gdb.checked("kmemleak")   # the list's first object
        finally:
            gdb.checked(f"set *(unsigned long *){where} = {value}")
        assert kind not in scan(gdb)



def settle_stopped(gdb) -> None:
    """Get the guest stopped at a prompt that answers, whatever periodic scans left running."""
    for k in range(20):
        gdb.send("interrupt")
        time.sleep(0.5)
        gdb.send("kmem info")
        gdb.send(f"echo SETTLED-{k}\\n")
        before, _ = gdb.expect(f"SETTLED-{k}", timeout=30)
        answered = "kernel release" in before
        gdb.expect(re.escape("(kmemgdb) "), timeout=30)
        if answered:
            return
    raise AssertionError("the guest did not stop")


def test_periodic_scans_interrupt_scan_and_resume(lab):
    gdb = lab.gdb
    gdb.interrupt()
    assert "every 1 s" in gdb.checked("kmemleak scan=1")
    assert "expected scan=on" in gdb.cmd("kmemleak scan=soon")
    gdb.cont()
    out, status = lab.run("sleep 4; echo slept", timeout=60)
    assert status == 0 and "slept" in out          # the guest kept running across the scans
    gdb.expect(r"periodic scan (\d+): \d+ suspected memory leak", timeout=30)
    gdb.send("kmemleak scan=off")
    gdb.expect("periodic scans off", timeout=30)
    time.sleep(1.5)
    settle_stopped(gdb)
    gdb.cont()
