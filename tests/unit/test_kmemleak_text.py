from gdbext.core.kmemleak_text import parse_kmemleak

REPORT = """\
unreferenced object 0xffff888003a2b000 (size 1024):
  comm "insmod", pid 65, jiffies 4294672220 (age 10.084s)
  hex dump (first 32 bytes):
    6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b  kkkkkkkkkkkkkkkk
    00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  ................
  backtrace:
    [<ffffffff811a5d26>] kmalloc_trace+0x26/0x90
    [<ffffffffa0005039>] kmemleak_test_init+0x39/0x1000 [kmemleak_test]
    [<ffffffff81000a1c>] do_one_initcall+0x3c/0x1d0
unreferenced object 0xffffc90000065000 (size 64):
  comm "insmod", pid 65, jiffies 4294672221
  hex dump (first 32 bytes):
    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................
  backtrace:
    [<ffffffff81104cd1>] __vmalloc_node_range+0x1b1/0x250
"""


def test_parse_two_objects():
    leaks = parse_kmemleak(REPORT)
    assert [(l.address, l.size) for l in leaks] == [(0xFFFF888003A2B000, 1024), (0xFFFFC90000065000, 64)]
    first = leaks[0]
    assert (first.comm, first.pid, first.jiffies, first.age) == ("insmod", 65, 4294672220, 10.084)
    assert first.hex == b"k" * 16 + bytes(range(16))
    assert [f.symbol for f in first.backtrace] == [
        "kmalloc_trace+0x26/0x90", "kmemleak_test_init+0x39/0x1000", "do_one_initcall+0x3c/0x1d0"]
    assert [f.module for f in first.backtrace] == [None, "kmemleak_test", None]
    assert first.backtrace[1].pc == 0xFFFFFFFFA0005039
    assert leaks[1].age is None and len(leaks[1].backtrace) == 1


def test_hashed_pointers_and_freed_init_code():
    text = """unreferenced object 0xffff88800027bc40 (size 32):
  comm "insmod", pid 30, jiffies 4294892530
  backtrace:
    [<(____ptrval____)>] kmalloc_trace+0x11/0x20
    [<(____ptrval____)>] 0xffffffffa000502d
"""
    frames = parse_kmemleak(text)[0].backtrace
    assert (frames[0].pc, frames[0].symbol) == (None, "kmalloc_trace+0x11/0x20")
    assert (frames[1].pc, frames[1].symbol) == (0xFFFFFFFFA000502D, None)


def test_empty_and_noise():
    assert parse_kmemleak("") == []
    assert parse_kmemleak("kmemleak: 3 new suspected memory leaks\n") == []
