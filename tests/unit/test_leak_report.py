"""Report data, rendering, suppressions and the state kept between scans (no gdb)."""
import numpy as np
import pytest

from gdbext.core.leakreport import (Leak, SuppressionError, leak_from_json, parse_suppressions,
                                    render_leak, render_report, suppression_for)
from gdbext.core.leakstate import LeakState
from gdbext.core.percpu import allocated_runs
from gdbext.core.render import Painter
from gdbext.core.report import Frame

FRAMES = [Frame(0xFFFFFFFF811A5D26, "kmalloc_trace+0x26/0x90", None, "mm/slab_common.c", 1026),
          Frame(0xFFFFFFFFA0005039, "hello_init+0x39/0x100", "hello", "hello.c", 12)]


def leak(addr=0xFFFF888003A2B000, kind="direct", **kw):
    return Leak(addr, 1024, kind, "slab", "kmalloc-1k", bytes(range(32)), list(FRAMES), **kw)


def test_kernel_format_text():
    text = render_leak(leak(comm="insmod", pid=65, jiffies=4294672220, age=10.084,
                            indirect_count=2, indirect_bytes=64), Painter(False))
    lines = text.splitlines()
    assert lines[0] == "unreferenced object 0xffff888003a2b000 (size 1024):"
    assert lines[1] == '  comm "insmod", pid 65, jiffies 4294672220 (age 10.084s)'
    assert "2 indirect object(s) (64 bytes)" in lines[2]
    assert lines[3] == "  hex dump (first 32 bytes):"
    assert lines[4].startswith("    00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  ")
    assert "[<ffffffffa0005039>] hello_init+0x39/0x100 [hello] hello.c:12" in text
    assert "\x1b[" not in text
    assert "\x1b[" in render_leak(leak(), Painter(True))


def test_report_lists_direct_first_and_counts_indirect():
    out = render_report([leak(), leak(0x1000, "indirect", owner=0xFFFF888003A2B000)], Painter(False), ["note"])
    assert out.count("unreferenced object") == 1
    assert "1 direct leak(s), 1 indirect" in out and out.endswith("kmemleak: note")


def test_json_round_trip():
    l = leak(comm="sh", pid=1, jiffies=5, age=1.5)
    assert leak_from_json(l.to_json()) == l


def test_suppressions_parse_match_and_generate():
    sups = parse_suppressions("# comment\nfunction=hello_* module=hello  # mine\ncache=kmalloc-2k\n")
    assert len(sups) == 2 and sups[0].name == "mine"
    assert sups[0].matches(leak()) and not sups[1].matches(leak())
    assert not parse_suppressions("function=other_*")[0].matches(leak())
    with pytest.raises(SuppressionError, match="line 1|:1:"):
        parse_suppressions("size=12")
    generated = suppression_for(leak())
    assert generated.function == "hello_init" and generated.module == "hello"
    assert parse_suppressions(generated.line())[0].matches(leak())


def test_state_clear_mark_and_age_rule():
    a, b = leak(0x1000), leak(0x2000)
    state = LeakState()
    state.observe([a, b], now=0)
    state.clear([a])
    assert state.filter([a, b], now=0)[0] == [b]
    state.set_mark({(0x2000, 1024, "kmalloc-1k")}, None)
    c = leak(0x3000)
    assert state.filter([a, b, c], since_mark=True)[0] == [c]
    aged = LeakState(age_rule=True)
    aged.observe([c], now=0)
    assert aged.filter([c], now=10)[0] == []          # seen in one scan only
    aged.observe([c], now=10)
    assert aged.filter([c], now=10)[0] == [c]         # two scans, older than 5 s
    young = LeakState(age_rule=True)
    young.observe([c], now=0)
    young.observe([c], now=1)
    assert young.filter([c], now=1)[0] == []


def test_indirect_leaks_follow_their_direct_one():
    d, i = leak(0x1000), leak(0x2000, "indirect", owner=0x1000)
    state = LeakState()
    state.clear([d])
    assert state.filter([d, i])[0] == []


def test_percpu_allocated_runs():
    bits = np.zeros(2, np.uint64)
    bits[0] = 0b1110_0000_0011          # units 0-1 and 9-11 allocated
    bits[1] = 1 << 63                   # unit 127
    assert allocated_runs(bits, 128) == [(0, 8), (32, 48), (504, 512)]   # whole 8-byte words
