"""Bad command lines: exit status 2 and one line on stderr, before anything boots."""
import subprocess
import sys
from pathlib import Path

import pytest

from kmemgdb.run import KmemcheckSpec

REPO = Path(__file__).resolve().parents[2]


def kmemgdb(*args):
    return subprocess.run([sys.executable, "-m", "kmemgdb.cli", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60,
                          env={"PYTHONPATH": f"{REPO}:{REPO / 'scripts'}", "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("args, message", [
    (["run", "--kmemcheck", "cache:"], "bad item 'cache:'"),
    (["run", "--kmemcheck", "oneshot"], "nothing to track"),
    (["run", "--kmemcheck", "partial-ok=maybe,all"], "bad item 'partial-ok=maybe'"),
    (["run", "--kmemcheck", "all,watchdog=soon"], "bad item 'watchdog=soon'"),
    (["run", "--insmod", "/nonexistent.ko"], "not a .ko file nor a module of the guest kernel"),
    (["run", "--timeout", "0"], "--timeout must be positive"),
    (["run", "--frobnicate"], "unrecognized arguments"),
    (["nosuch"], "invalid choice"),
    (["module", "build", "/nonexistent-dir"], "is not a directory"),
    (["run", "--fail-alloc", "module:foo"], "expected module:NAME,nth=N"),
    (["run", "--fail-alloc", "module:foo,nth=0"], "expected module:NAME,nth=N"),
    (["run", "--fail-alloc-sweep", "cache:foo"], "expected module:NAME"),
    (["run", "--fail-alloc", "module:a,nth=1", "--fail-alloc-sweep", "module:a"], "not allowed with"),
    (["run", "--insmod", ""], "--insmod: expected a .ko file"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    res = kmemgdb(*args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_kmemcheck_spec_becomes_commands_and_boot_arguments():
    spec = KmemcheckSpec.parse("cache:foo,notrack:bar,oneshot,partial-ok=off")
    assert spec.commands == ["kmemcheck track cache foo", "kmemcheck notrack cache bar",
                             "set kmemcheck partial-ok off"]
    assert spec.mode == 2
    assert spec.append() == ["debug_pagealloc=on", "slub_debug=U,foo"]
    assert KmemcheckSpec.parse("all").append() == ["debug_pagealloc=on"]
    assert KmemcheckSpec.parse("module:m,verify,watchdog=30").commands == [
        "kmemcheck track module m", "set kmemcheck verify on", "set kmemcheck watchdog 30"]


def test_leak_runs_boot_with_backtraces_keeping_what_the_user_asked():
    from kmemgdb.run import RunOptions, kernel_arguments, parse_fail_alloc, with_user_tracking
    assert kernel_arguments(RunOptions(kmemleak=True)) == ["slub_debug=U,kmalloc-*", "page_owner=on"]
    assert kernel_arguments(RunOptions(kmemleak=True, backtraces=False)) == []
    assert kernel_arguments(RunOptions(kmemleak=True, append=["slub_debug=FZP", "quiet"])) == [
        "page_owner=on", "slub_debug=FZPU", "quiet"]
    assert with_user_tracking("slub_debug=Z,kmalloc-*") == "slub_debug=ZU,kmalloc-*"
    assert with_user_tracking("slub_debug=U,foo") == "slub_debug=U,foo"
    assert with_user_tracking("slub_debug=-") == "slub_debug=U"
    with_kmemcheck = RunOptions(kmemleak=True, kmemcheck=KmemcheckSpec.parse("cache:foo"))
    assert kernel_arguments(with_kmemcheck) == ["debug_pagealloc=on", "slub_debug=U,kmalloc-*,foo",
                                                "page_owner=on"]
    assert kernel_arguments(RunOptions(kmemcheck=KmemcheckSpec.parse("cache:foo"))) == [
        "debug_pagealloc=on", "slub_debug=U,foo"]
    assert parse_fail_alloc("module:my-drv,nth=3") == ("my_drv", 3)
    assert parse_fail_alloc("module:my_drv", sweep=True) == ("my_drv", 1)
