"""Every script in examples/ runs as its `# run:` line says, and `kmemgdb gdb --batch` gives a
CI job the exit status it needs."""
import re
import shlex
import subprocess
import sys

import pytest

import pexpect

from .conftest import REPO, spawned_gdb

EXAMPLES = sorted((REPO / "examples").glob("*.gdb"))


def kmemgdb(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "kmemgdb.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def documented_command(script, ko) -> list[str]:
    """The `# run: kmemgdb ...` line of SCRIPT, with the example driver's built .ko."""
    line = re.search(r"^# run: kmemgdb (.*)$", script.read_text(), re.M)
    assert line, f"{script.name} has no `# run:` line"
    return [str(ko) if w == "mydriver.ko" else w for w in shlex.split(line.group(1))]


def test_every_example_is_tested():
    assert {s.name for s in EXAMPLES} == set(EXPECTED)


EXPECTED = {
    # script: (exit status, lines the output must have)
    "leak-check.gdb": (1, [r"refused, as expected",
                           r"direct leak: slab from cache mydriver_req, 1 indirect object",
                           r"\[<\w+>\] mydriver_cmd_write\+0x\w+/0x\w+ \[mydriver\]",
                           r"kmemleak: 1 direct leak\(s\), 1 indirect"]),
    "why-leak.gdb": (1, [r"object 0x\w+ \(mydriver_req, size 40\)\n  <- root module mydriver data "
                         r"at 0x\w+ \(mydriver_reqs\+0x0/0x10\)",
                         r"\(mydriver_req, size 40\) is unreferenced: a direct leak",
                         # the payload: an indirect leak, unless a stale word in a register or
                         # a live object still points to it (a conservative scan): then `why`
                         # names what
                         r"object 0x\w+ \(kmalloc-128, size 128\)( is unreferenced: an indirect "
                         r"leak, reachable only from leaked object|\n  <- )",
                         r'allocated by pid \d+ \("sh"\)']),
    "kmemcheck-cache.gdb": (1, [r"kmemcheck: 1 suppression\(s\) loaded",
                                r"Caught 32-bit read from uninitialized memory",
                                r"accessed: struct mydriver_req\.flags",
                                r"uninit was created at: allocation of 40-byte object"]),
}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example(script, mydriver_ko):
    status, patterns = EXPECTED[script.name]
    res = kmemgdb(*documented_command(script, mydriver_ko))
    assert "Traceback" not in res.stdout + res.stderr
    assert res.returncode == status, res.stdout[-3000:] + res.stderr
    for pattern in patterns:
        assert re.search(pattern, res.stdout), f"{pattern!r} not in:\n{res.stdout[-4000:]}"
    if script.name == "kmemcheck-cache.gdb":
        assert "accessed: struct mydriver_req.retries" not in res.stdout
        assert "reports: 1 (0 lost over the limit, 1 suppressed)" in res.stdout


def test_batch_exit_statuses(tmp_path):
    """One guest per run: clean is 0, a failing command 2 naming it, `quit N` is N."""
    script = tmp_path / "s.gdb"
    script.write_text("guest echo ok\nkmemleak scan\nguest false\nguest echo never\n")
    res = kmemgdb("gdb", "--batch", "-ex", "guest echo first", "-x", script)
    assert res.returncode == 2
    assert res.stdout.splitlines()[:2] == ["first", "ok"] and "never" not in res.stdout
    assert f"kmemgdb: -x {script}:" in res.stderr and "`false` exited with status 1" in res.stderr
    assert "Traceback" not in res.stderr

    res = kmemgdb("gdb", "--batch", "-ex", "kmemleak scan", "-ex", "quit 7")
    assert res.returncode == 7, res.stderr
    res = kmemgdb("gdb", "--batch", "-ex", "guest true", "-ex", "kmemleak scan")
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("args, error", [
    (["gdb", "--batch"], "give the commands with -x FILE or -ex CMD"),
    (["gdb", "--batch", "-x", "/nonexistent.gdb"], "-x /nonexistent.gdb: no such file"),
])
def test_batch_usage_errors(args, error):
    res = kmemgdb(*args, timeout=60)
    assert res.returncode == 2 and error in res.stderr and "Traceback" not in res.stderr


TUTORIAL_RUN = ["--exec", "echo submit 16 > /sys/kernel/debug/mydriver/cmd",
                "--exec", "echo submit 100 > /sys/kernel/debug/mydriver/cmd || true",
                "--exec", "rmmod mydriver"]


def test_tutorial_ci_command(mydriver_ko, tmp_path):
    """The README's five-minute tutorial, its one-command CI run."""
    res = kmemgdb("run", "--kmemleak", "--kmemcheck", "module:mydriver", "--insmod", mydriver_ko,
                  *TUTORIAL_RUN, "--json", tmp_path / "report.json")
    assert res.returncode == 1, res.stderr
    for pattern in (r"Caught 32-bit read from uninitialized memory",
                    r"accessed: struct mydriver_req\.flags",
                    r"direct leak: slab from cache mydriver_req, 1 indirect object",
                    r"\[<\w+>\] mydriver_cmd_write\+"):
        assert re.search(pattern, res.stdout), pattern


def test_tutorial_interactive_session(mydriver_ko):
    """The README's interactive session, typed at the prompt `kmemgdb gdb` hands over."""
    def typed(command, *expected):
        """Everything COMMAND printed, which must include the EXPECTED patterns in order."""
        child.sendline(command)
        out = ""
        for text in expected:
            child.expect(text)
            out += child.before + child.after
        child.expect_exact("(kmemgdb) ")
        return out + child.before

    with spawned_gdb("--append", "debug_pagealloc=on", "--insmod", str(mydriver_ko)) as child:
        typed("kmemleak scan", r"objects scanned")
        typed("kmemleak clear", r"marked as reported")
        typed("kmemcheck track module mydriver")
        typed("kmemcheck 1", r"kmemcheck: on")
        typed("guest insmod /modules/mydriver.ko")
        typed("guest echo submit 16 > /sys/kernel/debug/mydriver/cmd",
              r"Caught 32-bit read from uninitialized memory", r"accessed: struct mydriver_req\.flags")
        typed("guest echo submit 100 > /sys/kernel/debug/mydriver/cmd || true")
        typed("kmemleak scan", r"1 suspected memory leak")
        address = re.search(r"unreferenced object (0x[0-9a-f]+) \(size 40\)",
                            typed("kmemleak", r"direct leak: slab from cache mydriver_req")).group(1)
        typed(f"kmemleak why {address}", r"is unreferenced: a direct leak")
        typed("break mydriver_cmd_write", r"Breakpoint 1 at")
        typed("guest echo submit 8 > /sys/kernel/debug/mydriver/cmd; echo done",
              r"Breakpoint 1, mydriver_cmd_write")
        typed("bt 2", r"#0 .*mydriver_cmd_write", r"#1 .*full_proxy_write")
        typed("delete")
        typed("guest --wait", r"done")
        child.sendline("quit")
        child.expect(pexpect.EOF, timeout=60)
