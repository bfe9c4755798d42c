"""Acceptance of host-side kmemleak on the kernel's own leaky sample, in a fresh guest.

A conservative scan can be fooled by a stale pointer left on a live stack frame (seen: kthreadd
keeping a recycled vm_struct alive after other tests created kernel threads), so this runs on a
guest that did nothing else, as a developer's run would."""
import pytest

from kmemgdb.guestlab import LabOptions, booted

from .conftest import Stopped
from .test_kmemleak import printed_allocations, report, scan, scan_and_clear


@pytest.fixture(scope="module")
def cleared(hello_ko, tmp_path_factory):
    with booted(LabOptions(modules=[hello_ko]), tmp_path_factory.mktemp("lab")) as lab:
        scan_and_clear(lab)
        yield lab


def test_kmemleak_test_module_leaks_are_found(cleared):
    lab = cleared
    since = len(lab.guest.console.text)
    _, status = lab.run("insmod /modules/kmemleak-test.ko")
    assert status == 0
    printed = printed_allocations(lab.guest.console.text, since)
    expected = {a: what for a, what in printed.items()
                if what.startswith(("kmalloc(32", "kmalloc(1024", "kmalloc(2048", "kmalloc(4096", "vmalloc"))}
    assert len(expected) == 13
    with Stopped(lab) as gdb:
        scan(gdb)
        leaks = {l["address"]: l for l in report(gdb, "--all")["leaks"]}
        text = gdb.checked("kmemleak")
        # Still referenced while the module is loaded: its list nodes and per-CPU pointers.
        for addr, what in printed.items():
            if addr not in expected:
                assert addr not in leaks, (what, gdb.checked(f"kmemleak why {addr:#x}"))
                assert "<- root" in gdb.checked(f"kmemleak why {addr:#x}")
        missing = {hex(a): (w, gdb.checked(f"kmemleak why {a:#x}"))
                   for a, w in expected.items() if a not in leaks}
    assert not missing, f"not reported: {missing}"
    extra = {hex(a): (l["cache"], l["size"]) for a, l in leaks.items() if a not in expected}
    assert not extra, f"reported but not leaked by kmemleak-test: {extra}"
    sizes = sorted(leaks[a]["size"] for a in expected)
    assert sizes == [32, 32, 1024, 1024, 2048, 2048] + [4096] * 7
    assert "unreferenced object" in text and "kmemleak_test_init+" in text
    assert "kmemleak-test.c:" in text           # vmalloc areas carry their caller
    vmalloc = [l for l in leaks.values() if l["object_kind"] == "vmalloc"]
    assert all(l["backtrace"][0]["module"] == "kmemleak_test" for l in vmalloc)

    since = len(lab.guest.console.text)
    lab.run("rmmod kmemleak_test")
    with Stopped(lab) as gdb:
        scan(gdb)
        after = {l["address"]: l for l in report(gdb, "--all")["leaks"]}
    nodes = [a for a, w in printed.items() if w.startswith("kzalloc")]
    assert len(nodes) == 10 and all(a in after for a in nodes)
    assert all(after[a]["size"] == 512 for a in nodes)
    percpu = [a for a, w in printed.items() if w == "kmalloc(129)"]
    assert percpu and all(a in after for a in percpu)
    assert set(expected) <= set(after)
