"""Start a QEMU guest with its gdbstub open, capture its console, and end it by process id."""
from __future__ import annotations

import glob
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from .argv import GuestSpec, kvm_usable, qemu_argv
from .console import Console, Pending, pump
from .shellbroker import ShellBroker

SHM_DIR = Path("/dev/shm")
_RAM_NAME = re.compile(r"kmemgdb-(\d+)-[0-9a-f]+")                    # in /dev/shm
_SOCKET_NAME = re.compile(r"kmemgdb-(\d+)-[0-9a-f]+\.(?:shell|qmp|tty)")  # in the temp dir
BROKER_NAME = re.compile(r"kmemgdb-(\d+)-[0-9a-f]+\.tty")    # a session's shell broker


class GuestError(Exception):
    """QEMU could not start, or the guest died; the message carries the console tail."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (QEMU may still lose a race: start() retries)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:PORT, read from /proc (no probe connection:
    connecting to the gdbstub would stop the guest)."""
    want = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(f.split()[1] == want and f.split()[3] == "0A" for f in lines)


_sync_ids = itertools.count(1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # someone else's process: alive
        return True
    return True


def remove_stale_files(shm_dir: Path = SHM_DIR, tmp_dir: str | None = None) -> list[str]:
    """Remove RAM files and sockets left by launchers that died without cleaning up (SIGKILL,
    power loss): their names carry the launcher's pid, and only files whose pid is gone go."""
    removed = []
    for directory, pattern in ((str(shm_dir), _RAM_NAME), (tmp_dir or tempfile.gettempdir(), _SOCKET_NAME)):
        for path in glob.glob(os.path.join(directory, "kmemgdb-*")):
            m = pattern.fullmatch(os.path.basename(path))
            if not m or pid_alive(int(m.group(1))):
                continue
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:
                pass
    return removed


def _orphan_guard() -> list[str]:
    """A prefix that kills QEMU when the launcher dies, however it dies: QEMU runs in a session
    of its own (a terminal's SIGHUP never reaches it), and a SIGKILLed launcher cannot end it.
    setpriv (util-linux) sets the parent-death signal and execs QEMU, which keeps it."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


class Guest:
    """One running QEMU. Use as a context manager so it is always ended by pid."""

    def __init__(self, spec: GuestSpec, workdir: Path, paused: bool = True):
        self.spec = spec
        self.workdir = Path(workdir)
        self.paused = paused
        name = f"kmemgdb-{os.getpid()}-{secrets.token_hex(4)}"
        self.ram_path = str(SHM_DIR / name)
        # In the temp dir, not the workdir: a unix socket path has at most 107 bytes.
        self.shell_socket = os.path.join(tempfile.gettempdir(), name + ".shell")
        self.qmp_socket = os.path.join(tempfile.gettempdir(), name + ".qmp")
        self.broker_socket = os.path.join(tempfile.gettempdir(), name + ".tty")
        self.broker: ShellBroker | None = None
        self.kvm = spec.accel == "kvm" or (spec.accel == "auto" and kvm_usable())
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.console: Console | None = None   # ttyS0: the kernel's messages
        self.shell: Console | None = None     # ttyS1: the guest shell, nothing else
        self._sock: socket.socket | None = None
        self._readers: list[threading.Thread] = []
        self._shell_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, attempts: int = 5) -> "Guest":
        self.workdir.mkdir(parents=True, exist_ok=True)
        remove_stale_files()
        last_error = ""
        for _ in range(attempts):
            self.port = free_port()
            if self._start_once():
                return self
            last_error = self._stderr_text()
            if "Address already in use" not in last_error and "bind" not in last_error:
                break
        self.stop()
        raise GuestError(f"QEMU did not start: {last_error.strip() or 'no error output'}")

    def _start_once(self) -> bool:
        argv = qemu_argv(self.spec, self.port, self.ram_path, self.paused, self.kvm,
                         self.shell_socket, self.qmp_socket)
        if os.environ.get("KMEMGDB_QEMU_DEBUG"):   # CPU resets (triple faults) and guest errors
            argv += ["-d", "cpu_reset,guest_errors", "-D", str(self.workdir / "qemu-debug.log")]
        self.argv = argv
        self._stderr = open(self.workdir / "qemu-stderr.log", "w+")
        self.proc = subprocess.Popen(_orphan_guard() + argv, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr,
                                     start_new_session=True)
        self.console = Console(self.workdir / "console.log", self._write_stdin)
        self._start_reader(self.proc.stdout.fileno(), self.console)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if _listening(self.port):     # chardevs exist before the gdbstub listens
                return self._connect_shell()
            time.sleep(0.02)
        return False

    def _connect_shell(self) -> bool:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(self.shell_socket)
        except OSError:
            return False
        self.shell = Console(self.workdir / "shell.log", self._write_shell)
        self.broker = ShellBroker(self.broker_socket, self._write_shell)
        self._start_reader(self._sock.fileno(), self.shell, self.broker.broadcast)
        return True

    def stop(self) -> None:
        """End QEMU by its pid and remove the RAM file (safe to call twice)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for reader in self._readers:
            reader.join(5)
        if self._sock:
            self._sock.close()
        if self.broker:
            self.broker.close()
        for path in (self.ram_path, self.shell_socket, self.qmp_socket):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "Guest":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state -----------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    @property
    def ram_size(self) -> int:
        return self.spec.memory_mib << 20

    def running(self) -> bool:
        return bool(self.proc) and self.proc.poll() is None

    def check(self) -> None:
        """Raise GuestError if QEMU exited or the kernel crashed."""
        assert self.console is not None
        crash = self.console.crash()
        if crash:
            raise GuestError(f"guest kernel crashed: {crash}\nconsole tail:\n{self.console.tail()}")
        if (self.console.closed or (self.shell and self.shell.closed)) and self.proc:
            try:                       # its outputs close a moment before the process is reaped
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if not self.running():
            rc = self.proc.returncode if self.proc else None
            raise GuestError(f"QEMU exited (status {rc}) {self._stderr_text().strip()}\n"
                             f"console tail:\n{self.console.tail()}")

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait for the guest init's ready line on the shell's line (the guest must be running):
        init prints it after opening ttyS1, so nothing typed from then on is lost."""
        assert self.shell is not None
        self.shell.wait_for(r"kmemgdb-guest-ready", timeout, alive=self.check)

    def run(self, command: str, timeout: float = 60,
            watch: Callable[[], None] | None = None) -> tuple[str, int]:
        """Run COMMAND in the guest shell; return (output, exit status). On return the kernel
        console holds everything the kernel printed before the command ended. WATCH is called
        while waiting and may raise to give up (the debugger side saw something go wrong)."""
        return self.start_command(command).wait(timeout, watch)

    def start_command(self, command: str) -> "GuestCommand":
        """Type COMMAND into the guest shell and return at once: for commands that stop at a
        breakpoint before they end. wait() on the result as run() does."""
        assert self.shell is not None
        return GuestCommand(self, self.shell.start_command(command))

    def pause(self, timeout: float = 10) -> None:
        """Pause the guest through QMP. gdb then gets the stop it waits for as a SIGINT: QEMU's
        gdbstub drops a Ctrl-C (0x03) that arrives while the guest is stopped at a breakpoint
        gdb resumes silently, and gdb would wait for its answer forever."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as qmp:
                qmp.settimeout(timeout)
                qmp.connect(self.qmp_socket)
                reader = qmp.makefile("r")
                reader.readline()                               # the greeting
                for command in ("qmp_capabilities", "stop"):
                    qmp.sendall(json.dumps({"execute": command}).encode() + b"\n")
                    while True:                                 # skip events to the answer
                        answer = json.loads(reader.readline())
                        if "return" in answer or "error" in answer:
                            break
                    if "error" in answer:
                        raise GuestError(f"QMP {command}: {answer['error'].get('desc')}")
        except (OSError, ValueError) as exc:                    # QEMU gone, or not QMP
            raise GuestError(f"could not pause the guest through QMP: {exc}") from exc

    def sync_console(self, timeout: float = 60) -> None:
        """Wait until the kernel console has caught up with the shell (the two lines are read
        by separate threads): a marker written to /dev/console follows every earlier printk."""
        assert self.shell is not None and self.console is not None
        tag = f"kmemgdb-sync-{next(_sync_ids)}"
        since = len(self.console.text)
        self.shell.run(f"echo {tag} >/dev/console", timeout, alive=self.check)
        self.console.wait_for(rf"{tag}\n", timeout, since, alive=self.check)

    # -- plumbing --------------------------------------------------------------------------
    def _write_stdin(self, data: bytes) -> None:
        if not self.proc or not self.proc.stdin:
            raise GuestError("guest is not running")
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise GuestError("QEMU exited; cannot type into the guest console") from exc

    def _write_shell(self, data: bytes) -> None:
        if not self._sock:
            raise GuestError("guest is not running")
        try:
            with self._shell_lock:      # the broker's clients type too
                self._sock.sendall(data)
        except OSError as exc:
            raise GuestError("QEMU exited; cannot type into the guest shell") from exc

    def _start_reader(self, fd: int, console: Console,
                      tap: Callable[[bytes], None] | None = None) -> None:
        reader = threading.Thread(target=pump, args=(fd, console, tap), daemon=True)
        reader.start()
        self._readers.append(reader)

    def _stderr_text(self) -> str:
        try:
            return (self.workdir / "qemu-stderr.log").read_text()
        except OSError:
            return ""


class GuestCommand:
    """A guest shell command that was started and is waited for later."""

    def __init__(self, guest: Guest, pending: Pending):
        self.guest, self.pending = guest, pending

    def wait(self, timeout: float = 60, watch: Callable[[], None] | None = None) -> tuple[str, int]:
        def alive() -> None:
            self.guest.check()
            if watch is not None:
                watch()
        result = self.pending.wait(timeout, alive=alive)
        self.guest.sync_console(timeout)
        self.guest.check()  # a command that crashed the kernel still lets its shell print the marker
        return result
