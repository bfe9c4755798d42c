"""Fixtures that boot the real guest kernel under QEMU and attach real gdb (pexpect).

One guest per test module; QEMU and gdb are ended by pid when the module's tests finish,
also when they fail."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pexpect
import pytest

from kmemgdb.gdbdriver import GdbError
from kmemgdb.guestlab import LabOptions, booted
from kmemgdb.kernel import ensure_kernel
from kmemgdb.modbuild import build_module

REPO = Path(__file__).resolve().parents[2]
HELLO_SRC = REPO / "tests" / "modules" / "kmemgdb_hello"
MYDRIVER_SRC = REPO / "examples" / "mydriver"

INTEGRATION = Path(__file__).resolve().parent
NEEDED = ("qemu-system-x86_64", "gdb")


def pytest_collection_modifyitems(config, items):
    """Every test here is a `guest` test (`-m "not guest"` deselects them); without QEMU or gdb
    they are skipped, saying which is missing. (A `pytestmark` in a conftest is not applied.)"""
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.guest)
            if missing:
                item.add_marker(pytest.mark.skip(reason=f"needs {', '.join(missing)} (make setup)"))


@pytest.fixture(scope="session")
def kernel_build():
    return ensure_kernel()


@pytest.fixture(scope="session")
def hello_ko(kernel_build):
    return build_module(kernel_build, HELLO_SRC)[0]


@pytest.fixture(scope="session")
def mydriver_ko(kernel_build):
    """The tutorial's example driver (a leak and an uninitialized read)."""
    return build_module(kernel_build, MYDRIVER_SRC)[0]


@pytest.fixture(scope="module")
def lab(hello_ko, tmp_path_factory):
    with booted(LabOptions(modules=[hello_ko]), tmp_path_factory.mktemp("lab")) as lab:
        yield lab


@contextlib.contextmanager
def spawned_gdb(*args: str):
    """`kmemgdb gdb ARGS` on a pty, as a person runs it; killed by pid if the test fails."""
    child = pexpect.spawn(sys.executable, ["-m", "kmemgdb.cli", "gdb", *args], cwd=str(REPO),
                          encoding="utf-8", timeout=120, env=dict(os.environ, NO_COLOR="1"),
                          dimensions=(200, 300))
    try:
        child.expect_exact("guest booted and stopped")
        child.expect_exact("(kmemgdb) ")
        yield child
    finally:
        if child.isalive():
            os.kill(child.pid, signal.SIGKILL)
        child.close(force=True)


class Stopped:
    """Context: guest stopped under gdb inside the block, running again after it."""

    def __init__(self, lab):
        self.lab = lab

    def __enter__(self):
        try:
            self.lab.gdb.interrupt()
        except GdbError:
            self.lab.guest.check()     # QEMU gone or kernel crashed: say so, with the console
            raise
        return self.lab.gdb

    def __exit__(self, *exc):
        self.lab.gdb.cont()


def expect_errors(gdb, cases: list[tuple[str, str]], one_line: bool = True) -> None:
    """Each command prints its expected message, on one line, with no Python traceback."""
    for command, message in cases:
        out = gdb.cmd(command)
        no_python_errors(out)
        assert message in out, (command, out)
        if one_line:
            assert len(out.strip().splitlines()) == 1, (command, out)


def refused_while_running(gdb, command: str) -> None:
    """COMMAND, typed while the guest runs in the background, asks to interrupt it first."""
    gdb.cmd("continue &")            # background execution: the prompt is back, guest runs
    out = gdb.cmd(command)
    no_python_errors(out)
    assert "the guest is running: interrupt it first" in out
    gdb.send("interrupt")
    gdb.expect("SIGINT")
    gdb.cmd("")                       # settle at the prompt with the guest stopped


def no_python_errors(output: str) -> None:
    assert "Traceback" not in output and "Python Exception" not in output, output


def field(output: str, name: str) -> str:
    m = re.search(rf"^{re.escape(name)}\s+(.*)$", output, re.M)
    assert m, f"no {name!r} in:\n{output}"
    return m.group(1).strip()
