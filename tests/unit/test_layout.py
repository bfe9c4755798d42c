"""Naming the bytes of an object from its struct layout (gdbext.core.layout), on hand-built
layouts shaped like the real ones (x86-64 Linux 6.1, checked with `ptype /o`)."""
import pytest

from gdbext.core.layout import (FieldRef, Member, TypeLayout, bitfield_bytes, describe, field_map,
                                render_field_map)

# struct check_req: a hole after timeout (20..23); size 32.
CHECK_REQ = TypeLayout("struct check_req", 32, (
    Member("flag8", 0, 1, "u8"),
    Member("small8", 1, 1, "u8"),
    Member("val16", 2, 2, "u16"),
    Member("val32", 4, 4, "u32"),
    Member("val64", 8, 8, "u64"),
    Member("timeout", 16, 4, "u32"),
    Member("tail", 24, 8, "u64"),
))

# struct kernel_siginfo of 6.1: an anonymous struct (the __SIGINFO macro) holding the header and
# union __sifields at 16; the 4-byte hole at 12..15 sits between si_code and _sifields.
SIFIELDS = (
    Member("_kill", 0, 8, "struct {...}", members=(
        Member("_pid", 0, 4, "__kernel_pid_t"), Member("_uid", 4, 4, "__kernel_uid32_t"))),
    Member("_timer", 0, 24, "struct {...}", members=(
        Member("_tid", 0, 4, "__kernel_timer_t"), Member("_overrun", 4, 4, "int"),
        Member("_sigval", 8, 8, "sigval_t"), Member("_sys_private", 16, 4, "int"))),
    Member("_sigchld", 0, 32, "struct {...}", members=(
        Member("_pid", 0, 4, "__kernel_pid_t"), Member("_uid", 4, 4, "__kernel_uid32_t"),
        Member("_status", 8, 4, "int"), Member("_utime", 16, 8, "__kernel_clock_t"),
        Member("_stime", 24, 8, "__kernel_clock_t"))),
)
SIGINFO_HEADER = (
    Member("si_signo", 0, 4, "int"),
    Member("si_errno", 4, 4, "int"),
    Member("si_code", 8, 4, "int"),
    Member("_sifields", 16, 32, "union __sifields", members=SIFIELDS, is_union=True),
)
KERNEL_SIGINFO = TypeLayout("struct kernel_siginfo", 48, (
    Member("", 0, 48, "struct {...}", members=SIGINFO_HEADER),
))
# struct siginfo: union { struct {__SIGINFO}; int _si_pad[32]; }, 128 bytes.
KSI = "struct kernel_siginfo"
SIGINFO = TypeLayout("struct siginfo", 128, (
    Member("", 0, 128, "union {...}", is_union=True, members=(
        Member("", 0, 48, "struct {...}", members=SIGINFO_HEADER),
        Member("_si_pad", 0, 128, "int [32]", array_count=32),
    )),
))

# struct foo { u32 mode:3; u32 flags:5; u32 big:12; /* 20 bits used */ u16 after; u8 last; }
# gdb: mode bitpos 0, flags bitpos 3, big bitpos 8 (bytes 1..2), after @4, last @6, size 8.
BITS = TypeLayout("struct foo", 8, (
    Member("mode", 0, 1, "u32", bit_offset=0, bit_size=3),
    Member("flags", 0, 1, "u32", bit_offset=3, bit_size=5),
    Member("big", 1, 2, "u32", bit_offset=8, bit_size=12),
    Member("after", 4, 2, "u16"),
    Member("last", 6, 1, "u8"),
))

# struct pair { int a; char b; } (size 8) in an array, plus a char array and a flexible array.
PAIR = (Member("a", 0, 4, "int"), Member("b", 4, 1, "char"))
ARRAYS = TypeLayout("struct arrs", 48, (
    Member("count", 0, 4, "int"),
    Member("pairs", 4, 24, "struct pair [3]", members=PAIR, array_count=3, element_size=8),
    Member("name", 28, 16, "char [16]", array_count=16),
    Member("ok", 44, 1, "bool"),
    Member("data", 48, 0, "u8 []", array_count=0, element_size=1),
))

# struct anon { int x; union { u64 whole; struct { u32 lo; u16 hi; }; }; char c; } size 24.
ANON = TypeLayout("struct anon", 24, (
    Member("x", 0, 4, "int"),
    Member("", 8, 8, "union {...}", is_union=True, members=(
        Member("whole", 0, 8, "u64"),
        Member("", 0, 8, "struct {...}", members=(
            Member("lo", 0, 4, "u32"), Member("hi", 4, 2, "u16"))),
    )),
    Member("c", 16, 1, "char"),
))

NAMED_UNION = TypeLayout("union u", 8, (
    Member("small", 0, 2, "u16"),
    Member("word", 0, 4, "u32"),
), is_union=True)


@pytest.mark.parametrize("offset, kind, text", [
    (0, "field", "struct check_req.flag8"),
    (1, "field", "struct check_req.small8"),
    (3, "field", "struct check_req.val16"),
    (7, "field", "struct check_req.val32"),
    (8, "field", "struct check_req.val64"),
    (16, "field", "struct check_req.timeout"),
    (19, "field", "struct check_req.timeout"),
    (20, "padding", "padding between timeout and tail in struct check_req"),
    (23, "padding", "padding between timeout and tail in struct check_req"),
    (24, "field", "struct check_req.tail"),
    (31, "field", "struct check_req.tail"),
    (32, "outside", "offset 32, beyond struct check_req (size 32)"),
    (-1, "outside", "offset -1, beyond struct check_req (size 32)"),
])
def test_check_req(offset, kind, text):
    ref = describe(CHECK_REQ, offset)
    assert (ref.kind, ref.text) == (kind, text)


def test_field_ref_values():
    assert describe(CHECK_REQ, 17, 2) == FieldRef("field", "struct check_req.timeout",
                                                   "struct check_req.timeout", 16, 4)
    pad = describe(CHECK_REQ, 21, 2)
    assert (pad.path, pad.offset, pad.size) == ("struct check_req", 20, 4)
    # An access starting in a field and running into the hole is named after the field.
    assert describe(CHECK_REQ, 16, 8).text == "struct check_req.timeout"


@pytest.mark.parametrize("layout, offset, kind, text, field_offset, size", [
    (KERNEL_SIGINFO, 8, "field", "struct kernel_siginfo.si_code", 8, 4),
    (KERNEL_SIGINFO, 12, "padding", f"padding between si_code and _sifields in {KSI}", 12, 4),
    (KERNEL_SIGINFO, 15, "padding", f"padding between si_code and _sifields in {KSI}", 12, 4),
    # union: the first member holding the bytes: _kill for 16..23, then _timer, then _sigchld.
    (KERNEL_SIGINFO, 16, "field", "struct kernel_siginfo._sifields._kill._pid", 16, 4),
    (KERNEL_SIGINFO, 21, "field", "struct kernel_siginfo._sifields._kill._uid", 20, 4),
    (KERNEL_SIGINFO, 24, "field", "struct kernel_siginfo._sifields._timer._sigval", 24, 8),
    (KERNEL_SIGINFO, 36, "padding",
     "trailing padding after _sys_private in struct kernel_siginfo._sifields._timer", 36, 4),
    (KERNEL_SIGINFO, 40, "field", "struct kernel_siginfo._sifields._sigchld._stime", 40, 8),
    (KERNEL_SIGINFO, 48, "outside", "offset 48, beyond struct kernel_siginfo (size 48)", 48, 1),
    (SIGINFO, 12, "padding", "padding between si_code and _sifields in struct siginfo", 12, 4),
    (SIGINFO, 4, "field", "struct siginfo.si_errno", 4, 4),
    (SIGINFO, 60, "field", "struct siginfo._si_pad[15]", 60, 4),
])
def test_siginfo(layout, offset, kind, text, field_offset, size):
    ref = describe(layout, offset)
    assert (ref.kind, ref.text, ref.offset, ref.size) == (kind, text, field_offset, size)


@pytest.mark.parametrize("offset, size, kind, text, path", [
    (0, 1, "bitfield", "bitfields mode, flags in struct foo", "struct foo.mode"),
    (1, 1, "bitfield", "bitfield big in struct foo", "struct foo.big"),
    (2, 1, "bitfield", "bitfield big in struct foo", "struct foo.big"),
    (0, 4, "bitfield", "bitfields mode, flags, big in struct foo", "struct foo.mode"),
    (3, 1, "padding", "padding between big and after in struct foo", "struct foo"),
    (4, 2, "field", "struct foo.after", "struct foo.after"),
    (7, 1, "padding", "trailing padding after last in struct foo", "struct foo"),
])
def test_bitfields(offset, size, kind, text, path):
    ref = describe(BITS, offset, size)
    assert (ref.kind, ref.text, ref.path) == (kind, text, path)


def test_padding_after_bitfields_sharing_a_byte():
    # struct flags { unsigned a:1, b:1, c:1; /* 5-bit + 3-byte hole */ u32 x; } as in
    # task_struct's sched_remote_wakeup..reported_split_lock then atomic_flags.
    layout = TypeLayout("struct flags", 8, (
        Member("a", 0, 1, "unsigned int", bit_offset=0, bit_size=1),
        Member("b", 0, 1, "unsigned int", bit_offset=1, bit_size=1),
        Member("c", 0, 1, "unsigned int", bit_offset=2, bit_size=1),
        Member("x", 4, 4, "u32"),
    ))
    assert describe(layout, 0).text == "bitfields a, b, c in struct flags"
    assert describe(layout, 1).text == "padding between c and x in struct flags"
    assert bitfield_bytes(layout) == {0}


def test_bitfield_bytes():
    assert bitfield_bytes(BITS) == {0, 1, 2}
    assert bitfield_bytes(CHECK_REQ) == set()
    nested = TypeLayout("struct n", 24, (
        Member("x", 0, 8, "u64"),
        Member("arr", 8, 16, "struct foo [2]", array_count=2, members=BITS.members),
    ))
    assert bitfield_bytes(nested) == {8, 9, 10, 16, 17, 18}


@pytest.mark.parametrize("offset, kind, text, field_offset, size", [
    (0, "field", "struct arrs.count", 0, 4),
    (4, "field", "struct arrs.pairs[0].a", 4, 4),
    (12, "field", "struct arrs.pairs[1].a", 12, 4),
    (16, "field", "struct arrs.pairs[1].b", 16, 1),
    (17, "padding", "trailing padding after b in struct arrs.pairs[1]", 17, 3),
    (27, "padding", "trailing padding after b in struct arrs.pairs[2]", 25, 3),
    (31, "field", "struct arrs.name[3]", 31, 1),
    (45, "padding", "padding between ok and data in struct arrs", 45, 3),
    # past sizeof: the flexible array member data[] (kmalloc(sizeof(*p) + n))
    (50, "field", "struct arrs.data[2]", 50, 1),
])
def test_arrays(offset, kind, text, field_offset, size):
    ref = describe(ARRAYS, offset)
    assert (ref.kind, ref.text, ref.offset, ref.size) == (kind, text, field_offset, size)


@pytest.mark.parametrize("offset, kind, text", [
    (4, "padding", "padding between x and whole in struct anon"),
    (8, "field", "struct anon.whole"),
    (15, "field", "struct anon.whole"),
    (17, "padding", "trailing padding after c in struct anon"),
])
def test_anonymous_members(offset, kind, text):
    ref = describe(ANON, offset)
    assert (ref.kind, ref.text) == (kind, text)


def test_unions():
    assert describe(NAMED_UNION, 1).text == "union u.small"
    assert describe(NAMED_UNION, 3).text == "union u.word"
    ref = describe(NAMED_UNION, 5)
    assert (ref.kind, ref.text, ref.offset, ref.size) == \
        ("padding", "trailing padding after word in union u", 4, 4)


def test_field_map_check_req():
    letters = "iiiiiiii" + "iiiiiiii" + "uuuu" + "uuuu" + "iiiiiiii"
    rows = field_map(CHECK_REQ, letters)
    assert rows == [
        ("flag8", 0, 1, "i"), ("small8", 1, 1, "i"), ("val16", 2, 2, "ii"),
        ("val32", 4, 4, "iiii"), ("val64", 8, 8, "iiiiiiii"), ("timeout", 16, 4, "uuuu"),
        ("<padding>", 20, 4, "uuuu"), ("tail", 24, 8, "iiiiiiii"),
    ]


def test_field_map_short_and_long_letters():
    rows = field_map(CHECK_REQ, "i" * 18)
    assert rows[5] == ("timeout", 16, 4, "ii??")
    assert rows[-1] == ("tail", 24, 8, "????????")
    rows = field_map(CHECK_REQ, "i" * 32 + "aaaa")
    assert rows[-1] == ("<beyond struct>", 32, 4, "aaaa")
    rows = field_map(ARRAYS, "i" * 48 + "uu")
    assert rows[-1] == ("data[]", 48, 2, "uu")


def test_field_map_siginfo_union_and_anonymous():
    letters = "i" * 12 + "u" * 4 + "i" * 32
    rows = field_map(KERNEL_SIGINFO, letters)
    assert [r[:3] for r in rows] == [
        ("si_signo", 0, 4), ("si_errno", 4, 4), ("si_code", 8, 4), ("<padding>", 12, 4),
        ("_sifields._kill._pid", 16, 4), ("_sifields._kill._uid", 20, 4),
        ("_sifields.<rest of union>", 24, 24),
    ]
    assert rows[3][3] == "uuuu"
    # With the accessed offset, a union shows the member describe() names for it.
    rows = field_map(KERNEL_SIGINFO, letters, at=40)
    assert [r[0] for r in rows][4:] == [
        "_sifields._sigchld._pid", "_sifields._sigchld._uid", "_sifields._sigchld._status",
        "<padding>", "_sifields._sigchld._utime", "_sifields._sigchld._stime"]
    assert sum(r[2] for r in rows) == 48


def test_field_map_bitfields_arrays_anon():
    rows = field_map(BITS, "iiiuiiiu")
    assert rows == [("mode:3, flags:5", 0, 1, "i"), ("big:12", 1, 2, "ii"),
                    ("<padding>", 3, 1, "u"), ("after", 4, 2, "ii"), ("last", 6, 1, "i"),
                    ("<padding>", 7, 1, "u")]
    rows = field_map(ARRAYS, "i" * 48)
    assert [r[:3] for r in rows] == [
        ("count", 0, 4), ("pairs[0].a", 4, 4), ("pairs[0].b", 8, 1), ("<padding>", 9, 3),
        ("pairs[1].a", 12, 4), ("pairs[1].b", 16, 1), ("<padding>", 17, 3),
        ("pairs[2].a", 20, 4), ("pairs[2].b", 24, 1), ("<padding>", 25, 3),
        ("name", 28, 16), ("ok", 44, 1), ("<padding>", 45, 3)]
    rows = field_map(ANON, "i" * 24)
    assert [r[:3] for r in rows] == [("x", 0, 4), ("<padding>", 4, 4), ("whole", 8, 8),
                                     ("c", 16, 1), ("<padding>", 17, 7)]
    assert [r[0] for r in field_map(ANON, "i" * 24, at=12)] == \
        ["x", "<padding>", "whole", "c", "<padding>"]      # whole is first and holds byte 12
    assert field_map(NAMED_UNION, "iiuuuuuu") == [("small", 0, 2, "ii"),
                                                   ("<rest of union>", 2, 6, "uuuuuu")]
    assert field_map(NAMED_UNION, "iiuuuuuu", at=3) == [("word", 0, 4, "iiuu"),
                                                         ("<rest of union>", 4, 4, "uuuu")]


def test_render_field_map():
    letters = "i" * 16 + "uuuu" + "uuuu" + "i" * 8
    text = render_field_map(field_map(CHECK_REQ, letters), mark={16, 17})
    lines = text.splitlines()
    assert lines[5] == "  +16  timeout    (4)  uuuu  <-- read here"
    assert lines[0] == "   +0  flag8      (1)  i"
    assert lines[6] == "  +20  <padding>  (4)  uuuu"
    assert all("<--" not in line for i, line in enumerate(lines) if i != 5)
    assert render_field_map([]) == ""
    long = render_field_map([("buf", 0, 64, "i" * 40 + "u" * 24)])
    assert long == "  +0  buf  (64)  40i 24u"


def test_layout_imports_without_gdb():
    from .test_imports_without_gdb import BLOCK_GDB, REPO
    import subprocess
    import sys
    code = BLOCK_GDB + "import gdbext.core.layout\nprint('ok')"
    res = subprocess.run([sys.executable, "-c", code],
                         capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
