"""Drive an interactive gdb with the kmemgdb extension through pexpect (CLI and tests)."""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import pexpect

from qemu.guest import GuestError

REPO = Path(__file__).resolve().parents[2]
INIT_SCRIPT = REPO / "gdbext" / "init.py"
PROMPT = "(kmemgdb) "
NUDGE_AFTER = 5.0     # seconds without a prompt after a Ctrl-C before the guest is paused
WATCHDOG_MARK = "kmemgdb: kmemcheck watchdog:"


class GdbError(Exception):
    """gdb died, timed out, or a command printed an error where none was allowed."""


class WatchdogFired(GdbError):
    """kmemcheck's watchdog found the guest making no progress and is stopping it."""


class _Reader(threading.Thread):
    """Reads gdb's terminal all the time into TEXT. gdb prints reports from inside its hooks,
    while the guest runs and the driver waits on the guest; a terminal nobody reads fills up,
    gdb blocks in write() inside the hook, and the guest with it."""

    def __init__(self, proc):
        super().__init__(name="gdb-reader", daemon=True)
        self.proc = proc
        self.text = ""
        self.eof = False
        self.changed = threading.Condition()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                data = self.proc.read_nonblocking(65536, timeout=0.2)
            except pexpect.TIMEOUT:
                continue
            except (pexpect.EOF, OSError):        # gdb exited, or the session closed
                break
            with self.changed:
                self.text += data.replace("\r", "")
                self.changed.notify_all()
        with self.changed:
            self.eof = True
            self.changed.notify_all()


class GdbSession:
    """One gdb process. Ended by pid on close(), also when a test fails."""

    def __init__(self, vmlinux: Path, ram_file: str = "", module_path: list[Path] | None = None,
                 log_path: Path | None = None, timeout: float = 60, shell_socket: str = ""):
        env = dict(os.environ, NO_COLOR="1", TERM="dumb",
                   KMEMGDB_RAM_FILE=ram_file, KMEMGDB_SHELL_SOCKET=shell_socket,
                   KMEMGDB_MODULE_PATH=":".join(str(p) for p in module_path or []))
        argv = ["-q", "-nx", "-x", str(INIT_SCRIPT),
                "-iex", "set pagination off", "-iex", "set confirm off", "-iex", "set width 0",
                "-iex", "set height 0", "-iex", f"set prompt {PROMPT}", str(vmlinux)]
        self.timeout = timeout
        self.port = 0
        self.pause_guest: Callable[[], None] | None = None   # raises GuestError; see interrupt()
        self._log = open(log_path, "w") if log_path else None
        self.proc = pexpect.spawn("gdb", argv, env=env, encoding="utf-8", codec_errors="replace",
                                  timeout=timeout, echo=False, dimensions=(1000, 1000))
        if self._log:
            self.proc.logfile_read = self._log
        self._reader = _Reader(self.proc)
        self._reader.start()
        self._seen = 0                   # TEXT up to here has been returned to the caller
        self._expect_prompt(timeout=120)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        self.proc.sendline(line)

    def expect(self, pattern: str, timeout: float | None = None) -> tuple[str, re.Match]:
        """Wait for regex PATTERN in what gdb prints next; returns (the text before it, the
        match), and later output starts after the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + (timeout or self.timeout)
        reader = self._reader
        with reader.changed:
            while True:
                m = regex.search(reader.text, self._seen)
                if m:
                    before = reader.text[self._seen:m.start()]
                    self._seen = m.end()
                    return before, m
                left = deadline - time.monotonic()
                if reader.eof:
                    raise GdbError(f"gdb exited; last output:\n{self._tail()}")
                if left <= 0:
                    raise TimeoutError(pattern)
                reader.changed.wait(min(left, 0.5))

    def _tail(self) -> str:
        return self._reader.text[-2000:]

    def printed(self) -> str:
        """What gdb printed that no call has returned yet (while the guest runs)."""
        with self._reader.changed:
            return self._reader.text[self._seen:]

    def check_watchdog(self) -> None:
        """Raise WatchdogFired once kmemcheck's watchdog said it is stopping the guest."""
        text = self.printed()
        at = text.find(WATCHDOG_MARK)
        if at >= 0:
            raise WatchdogFired(text[at:].splitlines()[0].removeprefix("kmemgdb: "))

    def _expect_prompt(self, timeout: float | None = None) -> str:
        try:
            return self.expect(re.escape(PROMPT), timeout)[0]
        except TimeoutError:
            raise GdbError(f"gdb did not return to its prompt; last output:\n{self._tail()}") from None

    def cmd(self, command: str, timeout: float | None = None) -> str:
        """Run COMMAND at the gdb prompt and return its output."""
        self.send(command)
        return self._expect_prompt(timeout)

    def stream(self, command: str, write: Callable[[str], None], timeout: float | None = None) -> str:
        """Like cmd(), but WRITE gets gdb's output as it comes (a batch script's `guest`
        commands print for minutes)."""
        self.send(command)
        deadline = time.monotonic() + (timeout or self.timeout)
        shown = self._seen
        reader = self._reader
        with reader.changed:
            while True:
                at = reader.text.find(PROMPT, self._seen)
                # Hold back what may be the start of the prompt.
                upto = at if at >= 0 else max(shown, len(reader.text) - len(PROMPT))
                if upto > shown:
                    write(reader.text[shown:upto])
                    shown = upto
                if at >= 0:
                    out = reader.text[self._seen:at]
                    self._seen = at + len(PROMPT)
                    return out
                if reader.eof:
                    raise GdbError(f"gdb exited; last output:\n{self._tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GdbError(f"gdb did not return to its prompt in {timeout or self.timeout:.0f} s")
                reader.changed.wait(min(left, 0.5))

    def checked(self, command: str, timeout: float | None = None) -> str:
        """Like cmd(), but a Python traceback or an error line is a GdbError."""
        out = self.cmd(command, timeout)
        if "Traceback" in out or "Python Exception" in out:
            raise GdbError(f"{command!r} raised inside gdb:\n{out}")
        return out

    def connect(self, port: int) -> str:
        self.port = port
        out = self.cmd(f"target remote 127.0.0.1:{port}", timeout=60)
        if "Remote debugging using" not in out or "Connection refused" in out:
            raise GdbError(f"gdb could not connect to port {port}:\n{out}")
        return out

    def cont(self) -> None:
        """Let the guest run; gdb keeps the terminal until interrupt()."""
        self.send("continue")
        try:
            self.expect(re.escape("Continuing."))
        except TimeoutError:
            raise GdbError(f"gdb did not resume the guest; last output:\n{self._tail()}") from None

    def interrupt(self, timeout: float | None = None) -> str:
        """Stop the running guest (Ctrl-C at the gdb terminal) and wait for the prompt.

        A Ctrl-C can get lost: gdb swallows one that lands while it is still resuming the
        target, and QEMU drops the 0x03 that gdb sends while the guest sits at a breakpoint
        that gdb then resumes silently (a kmemgdb hook). Sending Ctrl-C again would not help:
        gdb takes a second one while the first is unanswered as "give up on the target"
        ("Disconnected from target"). So the guest is paused through QEMU (pause_guest,
        set by whoever started it), which gdb reports as the SIGINT stop it waits for."""
        self.proc.sendintr()
        return self.await_stop(timeout)

    def await_stop(self, timeout: float | None = None) -> str:
        """Wait for the prompt after a Ctrl-C (ours, or the watchdog's), pausing the guest
        through QEMU when the Ctrl-C got lost (see interrupt())."""
        deadline = time.monotonic() + (timeout or self.timeout)
        nudged = time.monotonic()
        while True:
            try:
                out = self.expect(re.escape(PROMPT), min(2, max(deadline - time.monotonic(), 0.1)))[0]
                if "Disconnected from target" in out and self.port:
                    out += self.connect(self.port)    # gdb let go of the guest: attach again
                return out
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise GdbError(f"gdb did not stop the guest; last output:\n{self._tail()}") from None
                if time.monotonic() - nudged >= NUDGE_AFTER:
                    self._nudge()
                    nudged = time.monotonic()

    def _nudge(self) -> None:
        try:
            if self.pause_guest is not None:
                self.pause_guest()
                return
        except GuestError:      # QEMU gone: a second Ctrl-C at least makes gdb notice
            pass
        self.proc.sendintr()

    def wait_stop(self, timeout: float | None = None) -> str:
        """Wait for the running guest to stop by itself (a breakpoint) and return gdb's output."""
        return self._expect_prompt(timeout)

    def hand_over(self) -> None:
        """Stop reading gdb's terminal: a person takes it (pexpect's interact())."""
        self._reader.done.set()
        self._reader.join()

    def close(self) -> None:
        self._reader.done.set()
        if self.proc.isalive():
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._reader.join(timeout=5)
        self.proc.close(force=True)
        if self._log:
            self._log.close()

    def __enter__(self) -> "GdbSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
