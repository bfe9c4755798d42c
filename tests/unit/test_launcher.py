import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from qemu.argv import GuestSpec, kvm_usable, qemu_argv
from qemu.console import Console, ConsoleError
from qemu.guest import remove_stale_files


def test_argv_shares_ram_and_opens_gdbstub():
    spec = GuestSpec(Path("/k/bzImage"), Path("/k/initrd"), memory_mib=512, smp=2, append=["x=1"])
    argv = qemu_argv(spec, 4321, "/dev/shm/ram", paused=True, kvm=False,
                     shell_socket="/tmp/s", qmp_socket="/tmp/q")
    joined = " ".join(argv)
    assert "memory-backend-file,id=ram0,size=512M,mem-path=/dev/shm/ram,share=on" in joined
    assert "-gdb tcp:127.0.0.1:4321" in joined and "-S" in argv
    assert "socket,id=sh0,path=/tmp/s,server=on,wait=off" in joined
    assert "-qmp unix:/tmp/q,server=on,wait=off" in joined
    assert argv[argv.index("-accel") + 1] == "tcg" and argv[argv.index("-smp") + 1] == "2"
    assert argv[argv.index("-append") + 1] == "console=ttyS0 nokaslr panic=0 no_hash_pointers i8042.noaux x=1"


def test_kvm_needs_vmx_or_svm():
    assert not kvm_usable("flags\t: fpu sse2\n") or not Path("/dev/kvm").exists()


class FakeShell:
    """Echoes what it is sent and answers like busybox sh would."""

    def __init__(self, tmp_path: Path, reply: str, status: int):
        self.console = Console(tmp_path / "console.log", self.write)
        self.reply, self.status = reply, status

    def write(self, data: bytes) -> None:
        text = data.decode()
        def answer():
            self.console.feed(text.replace("\n", "\r\n"))          # echo
            begin = text.split(";")[0].split('"')[1] + "-begin@@"
            self.console.feed(begin + "\r\n" + self.reply)
            tag = text.rsplit("@@", 2)[-2].split(":")[0]
            self.console.feed(f"@@{tag}:{self.status}@@\r\n/ # ")
        threading.Thread(target=answer).start()


def test_console_run_returns_output_and_status(tmp_path):
    shell = FakeShell(tmp_path, "6.1.192\r\nsecond line\r\n", 3)
    out, status = shell.console.run("uname -r", timeout=5)
    assert out == "6.1.192\nsecond line\n" and status == 3
    assert "6.1.192" in (tmp_path / "console.log").read_text()


def test_console_wait_times_out_with_tail(tmp_path):
    console = Console(tmp_path / "c.log", lambda b: None)
    console.feed("booting\nKernel panic - not syncing: VFS\n")
    assert console.crash() == "Kernel panic - not syncing: VFS"
    start = time.monotonic()
    with pytest.raises(ConsoleError, match="Kernel panic"):
        console.wait_for("never", timeout=0.3)
    assert time.monotonic() - start < 2


def test_progress_holds_back_a_partial_line_until_the_command_ends(tmp_path):
    console = Console(None, lambda b: None)
    pending = console.start_command("x")
    assert pending.progress() == ("", None)
    console.feed(f"@@{pending.tag}-begin@@\r\nline one\r\npartial")
    assert pending.progress() == ("line one\n", None)
    console.feed(f" line\n@@{pending.tag}:4@@\n")
    assert pending.progress() == ("line one\npartial line\n", 4)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_files_of_dead_launchers_are_removed(tmp_path):
    shm, tmp = tmp_path / "shm", tmp_path / "tmp"
    shm.mkdir(), tmp.mkdir()
    dead, alive = _dead_pid(), os.getpid()
    stale = [shm / f"kmemgdb-{dead}-0a1b", tmp / f"kmemgdb-{dead}-0a1b.qmp",
             tmp / f"kmemgdb-{dead}-0a1b.tty", tmp / f"kmemgdb-{dead}-0a1b.shell"]
    kept = [shm / f"kmemgdb-{alive}-0a1b", tmp / f"kmemgdb-{alive}-0a1b.tty",
            shm / f"kmemgdb-{dead}-notes.txt", tmp / f"kmemgdb-{dead}-0a1b", shm / "other-1-2"]
    for path in stale + kept:
        path.write_text("")
    removed = remove_stale_files(shm, str(tmp))
    assert sorted(removed) == sorted(map(str, stale))
    assert all(p.exists() for p in kept)


def test_shell_sessions_are_the_live_brokers(tmp_path):
    from kmemgdb.errors import KmemgdbError
    from kmemgdb.shell import choose, sessions
    dead, alive = _dead_pid(), os.getpid()
    for pid in (dead, alive):
        (tmp_path / f"kmemgdb-{pid}-0a1b.tty").write_text("")
    found = sessions(str(tmp_path))
    assert found == {alive: str(tmp_path / f"kmemgdb-{alive}-0a1b.tty")}
    assert choose(found, None) == found[alive] == choose(found, alive)
    with pytest.raises(KmemgdbError, match=f"no kmemgdb session {dead}"):
        choose(found, dead)
    with pytest.raises(KmemgdbError, match="no kmemgdb session is running"):
        choose({}, None)
    with pytest.raises(KmemgdbError, match="--session PID"):
        choose({1: "a", 2: "b"}, None)
