"""gdb with the extension but no guest: commands say what to do, never a traceback."""
import re

import pytest

from kmemgdb.gdbdriver import GdbSession

from .conftest import no_python_errors


@pytest.fixture(scope="module")
def lone_gdb(kernel_build, tmp_path_factory):
    with GdbSession(kernel_build.vmlinux, log_path=tmp_path_factory.mktemp("gdb") / "gdb.log") as gdb:
        yield gdb


@pytest.mark.parametrize("command", ["kmem info", "kmem vtop 0xffffffff81000000",
                                     "kmem pte hide 0xffffffff81000000", "kmem symbols"])
def test_commands_need_a_guest(lone_gdb, command):
    out = lone_gdb.cmd(command)
    no_python_errors(out)
    assert "no guest: connect first with `target remote" in out
    assert len(out.strip().splitlines()) == 1


def test_show_all_and_help_work_without_a_guest(lone_gdb):
    assert "0 hidden page(s)" in lone_gdb.checked("kmem pte list")
    assert "kmem vtop" in lone_gdb.checked("help kmem")
    no_python_errors(lone_gdb.cmd("kmem pte show-all"))


def test_missing_ram_file_is_a_clear_error(lone_gdb):
    out = lone_gdb.cmd("set kmemgdb ram-file /nonexistent/ram")
    no_python_errors(out)
    assert "ram-file" in lone_gdb.checked("show kmemgdb ram-file")


KMEMLEAK_VERBS = ["scan", "report", "new", "clear", "mark", "dump", "why", "stack", "hooks",
                  "module-caches", "age", "suppress", "suppressions", "on", "off", "help"]


def completions(gdb, line: str) -> list[str]:
    out = gdb.checked(f"complete {line}")
    no_python_errors(out)
    return out.splitlines()


@pytest.mark.parametrize("command", ["help kmemleak", "kmemleak help"])
def test_kmemleak_help_lists_every_verb_with_its_usage(lone_gdb, command):
    out = lone_gdb.checked(command)
    no_python_errors(out)
    listed = [m.group(1) for m in re.finditer(r"^kmemleak ([a-z-]+)", out, re.M)]
    assert listed == KMEMLEAK_VERBS, out
    assert out.startswith("Host-side kmemleak")
    assert re.search(r"^kmemleak stack on\|off +Scan task stacks", out, re.M), out
    assert "kmemleak stack=on" in out              # the kernel's form, mentioned once


def test_help_of_one_verb_is_its_argparse_help(lone_gdb):
    out = lone_gdb.checked("kmemleak help why")
    assert "Usage: kmemleak why ADDR" in out and "a number or gdb expression" in out, out
    report = lone_gdb.checked("kmemleak help report")
    assert "Usage: kmemleak report [--all] [--new] [--json]" in report
    out = lone_gdb.cmd("kmemleak help frobnicate")
    assert "unknown verb 'frobnicate'" in out and len(out.strip().splitlines()) == 1


def test_kmem_and_kmemcheck_help_come_from_their_parsers(lone_gdb):
    out = lone_gdb.checked("help kmem vtop")
    assert out.splitlines()[0].startswith("Translate a guest virtual address")
    assert "Usage: kmem vtop ADDR" in out and "a number or gdb expression" in out
    out = lone_gdb.checked("help kmemcheck track")
    assert "Usage: kmemcheck track all|cache|module [NAME]" in out
    assert "kmemcheck help -- " in lone_gdb.checked("help kmemcheck")
    out = lone_gdb.checked("kmemcheck help")
    listed = [m.group(1) for m in re.finditer(r"^kmemcheck (\S+)", out, re.M)]
    assert listed == ["[0|1|2]", "track", "notrack", "shadow", "report", "suppress"], out
    assert "Usage: kmemcheck shadow ADDR [LEN]" in lone_gdb.checked("kmemcheck help shadow")


def test_unknown_verb_is_one_line_naming_help(lone_gdb):
    out = lone_gdb.cmd("kmemleak frobnicate")
    no_python_errors(out)
    assert out.strip() == "kmemleak: unknown command 'frobnicate' (see `kmemleak help`)"


@pytest.mark.parametrize("state", ["on", "off"])
def test_kernel_form_and_verb_form_are_the_same(lone_gdb, state):
    kernel_form = lone_gdb.checked(f"kmemleak stack={state}")
    assert kernel_form == lone_gdb.checked(f"kmemleak stack {state}")
    assert "task stacks are" in kernel_form
    out = lone_gdb.cmd("kmemleak stack=maybe")
    assert "expected on or off" in out and len(out.strip().splitlines()) == 1


@pytest.mark.parametrize("line, expected", [
    ("kmemleak s",
     ["kmemleak scan", "kmemleak stack", "kmemleak suppress", "kmemleak suppressions"]),
    ("kmemleak stack ", ["kmemleak stack off", "kmemleak stack on"]),
    ("kmemleak age=o", ["kmemleak age=off", "kmemleak age=on"]),
    ("kmemleak module-caches ", ["kmemleak module-caches off", "kmemleak module-caches on"]),
    ("kmemleak suppressions ", ["kmemleak suppressions clear", "kmemleak suppressions generate"]),
    ("kmemleak report --a", ["kmemleak report --all"]),
    ("kmemleak help su", ["kmemleak help suppress", "kmemleak help suppressions"]),
    ("kmemcheck tr", ["kmemcheck track"]),
    ("kmemcheck track ",
     ["kmemcheck track all", "kmemcheck track cache", "kmemcheck track module"]),
    ("kmemcheck notrack ", ["kmemcheck notrack cache", "kmemcheck notrack module"]),
    ("kmemcheck suppress ", ["kmemcheck suppress cache=", "kmemcheck suppress field=",
                             "kmemcheck suppress site="]),
    ("kmemcheck track cache kmalloc-", []),                 # no guest: no names
    ("kmem fail-alloc o", ["kmem fail-alloc off"]),
    ("kmem info --", ["kmem info --json"]),
    ("kmem vtop init_uts", ["kmem vtop init_uts_ns"]),     # gdb's expression completer
    ("set kmemcheck ver", ["set kmemcheck verify"]),
    ("set kmemcheck verify ", ["set kmemcheck verify off", "set kmemcheck verify on"]),
    ("set kmemgdb col", ["set kmemgdb color"]),
])
def test_completion(lone_gdb, line, expected):
    assert completions(lone_gdb, line) == expected


def test_suppress_completes_file_names(lone_gdb, tmp_path):
    (tmp_path / "leaks.sup").write_text("")
    (tmp_path / "dir").mkdir()
    assert completions(lone_gdb, f"kmemleak suppress {tmp_path}/") == \
        [f"kmemleak suppress {tmp_path}/dir/", f"kmemleak suppress {tmp_path}/leaks.sup"]
