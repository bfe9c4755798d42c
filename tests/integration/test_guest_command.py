"""`guest CMD` at the gdb prompt and `kmemgdb shell`: the guest's shell reached from gdb."""
import os
import signal
import sys
import time

import pexpect
import pytest

from kmemgdb.guestlab import LabOptions, booted

from .conftest import REPO, no_python_errors


@pytest.fixture(scope="module")
def glab(mydriver_ko, tmp_path_factory):
    """A guest stopped under gdb, as `kmemgdb gdb` hands it over."""
    with booted(LabOptions(modules=[mydriver_ko]), tmp_path_factory.mktemp("glab")) as lab:
        lab.gdb.interrupt()
        yield lab


def test_output_comes_back_and_the_guest_stops_again(glab):
    out = glab.gdb.checked("guest echo hello-$((40+2)); uname -r")
    assert out.splitlines() == ["hello-42", "6.1.192"]      # no SIGINT stop noise
    assert "0 hidden page(s)" in glab.gdb.checked("kmem pte list")     # stopped: commands work
    assert glab.gdb.checked("print $_guest_status").strip().endswith("= 0")


def test_failing_command_is_an_error_with_its_status(glab):
    out = glab.gdb.cmd("guest ls /nonexistent")
    no_python_errors(out)
    assert "guest: `ls /nonexistent` exited with status 1" in out
    assert glab.gdb.checked("print $_guest_status").strip().endswith("= 1")
    for command, error in (("guest", "expected a command"), ("guest --wait", "no command is running"),
                           ("guest --bogus", "unknown option")):
        out = glab.gdb.cmd(command)
        no_python_errors(out)
        assert error in out and len(out.strip().splitlines()) == 1


def test_output_streams_while_the_command_runs(glab):
    glab.gdb.send("guest echo first; sleep 3; echo second")
    glab.gdb.expect("first\n", timeout=30)
    assert "second" not in glab.gdb.printed()
    assert glab.gdb.wait_stop(30).strip() == "second"


def test_ctrl_c_stops_the_guest_with_the_command_pending(glab):
    glab.gdb.send("guest sleep 60; echo slept")
    time.sleep(3)
    out = glab.gdb.interrupt(30)
    assert "SIGINT" in out and "stopped before `sleep 60; echo slept` ended" in out
    out = glab.gdb.cmd("guest echo other")
    assert "still running in the guest" in out
    start = time.monotonic()
    out = glab.gdb.checked("guest --kill", timeout=30)
    assert out.strip() == "guest: `sleep 60; echo slept` ended by Ctrl-C"    # `echo slept` never ran
    assert time.monotonic() - start < 20
    assert glab.gdb.checked("guest echo after").strip() == "after"


def test_a_breakpoint_stops_the_command_and_wait_finishes_it(glab):
    glab.gdb.checked("guest insmod /modules/mydriver.ko")
    glab.gdb.checked("break mydriver_cmd_write")
    out = glab.gdb.cmd("guest echo before; echo submit 8 > /sys/kernel/debug/mydriver/cmd; "
                       "echo written", timeout=60)
    assert out.startswith("before\n")
    assert "Breakpoint 1, mydriver_cmd_write" in out and "stopped before" in out
    assert "mydriver_cmd_write" in glab.gdb.checked("bt 1")
    glab.gdb.checked("delete")
    assert glab.gdb.checked("guest --wait").strip() == "written"     # not `before` again
    glab.gdb.checked("guest echo flush > /sys/kernel/debug/mydriver/cmd; rmmod mydriver")


def test_kmemgdb_shell_is_the_same_shell_on_a_terminal(glab):
    """The broker belongs to this test process, so the session is this pid."""
    glab.gdb.cont()
    child = pexpect.spawn(sys.executable, ["-m", "kmemgdb.cli", "shell", "--session", str(os.getpid())],
                          cwd=str(REPO), encoding="utf-8", timeout=30)
    try:
        child.expect_exact("Ctrl-] ends")
        child.send("echo shell-$((6*7))\r")
        child.expect_exact("shell-42")
        child.send("\x1d")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            os.kill(child.pid, signal.SIGKILL)
        glab.gdb.interrupt()


def test_shell_without_a_session_is_a_clear_error():
    res = pexpect.run(f"{sys.executable} -m kmemgdb.cli shell --session 1", cwd=str(REPO),
                      withexitstatus=True, encoding="utf-8", timeout=30)
    out, status = res
    assert status == 2 and "no kmemgdb session 1" in out and "Traceback" not in out
