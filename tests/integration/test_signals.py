"""A CI job's timeout (SIGTERM), a closed terminal (SIGHUP) or a SIGKILL: no QEMU is left
running, no guest RAM file is left in /dev/shm."""
import glob
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pexpect
import pytest

from qemu.guest import remove_stale_files

from .conftest import REPO, spawned_gdb


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _qemu_of(pid: int, timeout: float = 120) -> int:
    """The launcher's QEMU, once its guest RAM file exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in _children(pid):
            try:
                qemu = Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"qemu-system")
            except FileNotFoundError:
                continue
            if qemu and _files_of(pid):
                return child
        time.sleep(0.2)
    raise AssertionError("QEMU never started")


def _files_of(pid: int) -> list[str]:
    return (glob.glob(f"/dev/shm/kmemgdb-{pid}-*")
            + glob.glob(os.path.join(tempfile.gettempdir(), f"kmemgdb-{pid}-*")))


def _gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            return True
        if state == "Z":        # dead; its parent has not reaped it yet
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_to_run_ends_qemu_and_removes_the_ram_file(sig):
    proc = subprocess.Popen([sys.executable, "-m", "kmemgdb.cli", "run", "--exec", "sleep 600"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        qemu = _qemu_of(proc.pid)
        time.sleep(3)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig
    assert f"kmemgdb: {sig.name}: guest and gdb ended" in err and "Traceback" not in err
    assert _gone(qemu)
    assert _files_of(proc.pid) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_to_interactive_gdb_ends_everything(sig):
    """`kmemgdb gdb` at its prompt: killed, or its terminal closed."""
    with spawned_gdb() as child:
        qemu = _qemu_of(child.pid)
        child.kill(sig)
        child.expect(pexpect.EOF, timeout=60)
        child.close()
        assert child.exitstatus == 128 + sig
    assert _gone(qemu)
    assert _files_of(child.pid) == []


def test_sigkill_leaves_no_qemu_and_a_later_start_removes_the_ram_file():
    proc = subprocess.Popen([sys.executable, "-m", "kmemgdb.cli", "run", "--exec", "sleep 600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        qemu = _qemu_of(proc.pid)
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _gone(qemu), "QEMU outlived its launcher"     # the parent-death signal
    left = _files_of(proc.pid)
    assert any(f.startswith("/dev/shm/") for f in left)  # nobody could remove it
    removed = remove_stale_files()
    assert set(left) <= set(removed) and _files_of(proc.pid) == []
