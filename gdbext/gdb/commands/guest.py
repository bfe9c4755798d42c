"""`guest CMD`: run a command in the guest's shell from the gdb prompt, checkers armed.

The shell is reached through a unix socket: the broker of the `kmemgdb` launcher (which sets
KMEMGDB_SHELL_SOCKET), or the socket chardev of a QEMU started by hand. The guest runs only
while the command does: `continue` until its end marker arrives, then the guest is stopped
again, so the prompt comes back with the guest where the command left it.
"""
from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time

import gdb

from qemu.console import Console, Pending, pump
from .. import target
from .base import require_stopped_guest

RETRY_INTERRUPT = 1.0      # seconds: an interrupt that lands while gdb resumes a silent hook is lost


class ShellSocket(gdb.Parameter):
    """Unix socket of the guest's shell: the `kmemgdb` launcher's broker (set by `kmemgdb gdb`),
    or a QEMU socket chardev (`-chardev socket,id=sh,path=PATH,server=on,wait=off -serial
    chardev:sh` with a shell on that serial line)."""
    set_doc = "Set the unix socket of the guest shell used by `guest`."
    show_doc = "Show the unix socket of the guest shell used by `guest`."

    def __init__(self):
        super().__init__("kmemgdb shell-socket", gdb.COMMAND_DATA, gdb.PARAM_OPTIONAL_FILENAME)
        self.value = os.environ.get("KMEMGDB_SHELL_SOCKET", "")


class ShellUnreachable(Exception):
    pass


class GuestShell:
    """One connection to the guest shell, kept across `guest` commands."""

    def __init__(self):
        self.path = ""
        self.sock: socket.socket | None = None
        self.console: Console | None = None
        self.pending: Pending | None = None     # a command that has not ended yet
        self.command = ""
        self.printed = 0                        # its output shown so far (a --wait goes on)

    def start(self, line: str, command: str) -> None:
        """Type LINE into the shell as the pending command, known as COMMAND."""
        self.pending, self.command, self.printed = self.console.start_command(line), command, 0

    def ensure(self, path: str) -> Console:
        if self.console and path == self.path and not self.console.closed:
            return self.console
        self.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise ShellUnreachable(f"cannot reach the guest shell at {path}: {exc.strerror}") from None
        self.path, self.sock = path, sock
        self.console = Console(None, sock.sendall)
        threading.Thread(target=pump, args=(sock.fileno(), self.console), daemon=True,
                         name="guest-shell").start()
        return self.console

    def close(self) -> None:
        if self.sock:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        self.sock, self.console, self.pending = None, None, None


SHELL = GuestShell()


class Streamer:
    """While the guest runs: copies the command's output to the terminal and stops the guest
    once the command ended. gdb's own output of the `continue` is captured instead and shown
    after it, without the stop this makes ("Program received signal SIGINT"): hook messages
    (kmemcheck reports) stay, the noise goes. The thread writes straight to gdb's stdout,
    past the capture, and stops the guest by posting `interrupt` to gdb's main loop, which
    runs posted events also during the synchronous `continue`."""

    def __init__(self, shell: GuestShell):
        self.shell = shell
        self.terminal = 1                # gdb's stdout is captured meanwhile: the real one
        self.done = threading.Event()    # the `continue` returned
        self.ended = False               # the command's end marker arrived
        self.thread = threading.Thread(target=self._watch, name="guest-streamer", daemon=True)

    def _watch(self) -> None:
        console = self.shell.console
        last_interrupt = 0.0
        while not self.done.is_set():
            seen = len(console.text)
            status = self.flush()
            if status is not None:
                self.ended = True
                now = time.monotonic()
                if now - last_interrupt >= RETRY_INTERRUPT:
                    gdb.post_event(self._interrupt)
                    last_interrupt = now
                self.done.wait(0.1)
            else:
                console.wait_change(seen, 0.2)

    def _interrupt(self) -> None:
        if self.done.is_set() or target.stopped():
            return
        try:
            gdb.execute("interrupt", to_string=True)
        except gdb.error:
            pass

    def flush(self) -> int | None:
        text, status = self.shell.pending.progress()
        if len(text) > self.shell.printed:
            os.write(self.terminal, text[self.shell.printed:].encode())
            self.shell.printed = len(text)
        return status

    def run(self) -> int | None:
        """Let the guest run until the command ended or something else stopped it; return the
        command's exit status (None when it has not ended)."""
        with _captured() as said:
            self.terminal = said[0]
            self.thread.start()
            try:
                gdb.execute("continue")
            finally:
                self.done.set()
                self.thread.join()
                self.flush()
        self.terminal = 1
        status = self.flush()
        text = said[1]
        if self.ended:
            text = text.split("\nProgram received signal SIGINT", 1)[0]
        text = text.removeprefix("Continuing.\n").strip("\n")
        if text:
            gdb.write(text + "\n")
        return status


@contextlib.contextmanager
def _captured():
    """Capture gdb's stdout meanwhile at the file descriptor (gdb prints a stop from its event
    loop, past `to_string` and `set logging redirect`). Yields [the terminal's fd, captured
    text (filled on exit)]."""
    gdb.flush()
    terminal = os.dup(1)
    out: list = [terminal, ""]
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        try:
            yield out
        finally:
            gdb.flush()
            os.dup2(terminal, 1)
            os.close(terminal)
            capture.seek(0)
            out[1] = capture.read().decode(errors="replace")


class Guest(gdb.Command):
    """Run a shell command in the guest, with kmemgdb's checkers armed.

Usage: guest CMD...        resume the guest, run CMD in its shell, show its output as it comes,
                           stop the guest again when CMD ends
       guest --wait        resume a command that was stopped before it ended, until it ends
       guest --kill        end such a command (Ctrl-C on the guest's terminal), then stop
CMD is a shell command line of the guest (busybox sh): `guest insmod /modules/my.ko`,
`guest echo 1 > /sys/kernel/debug/mytest; dmesg | tail -3`. Ctrl-C stops the guest where it is,
with CMD still running: look around, then `guest --wait` or `guest --kill`. A breakpoint or a
kmemcheck watchdog stop does the same. A nonzero exit status is an error (a sourced script
stops there); `$_guest_status` holds the last status. The shell is reached through `set kmemgdb
shell-socket` (`kmemgdb gdb` sets it); `kmemgdb shell` opens the same shell on a terminal."""

    def __init__(self):
        super().__init__("guest", gdb.COMMAND_RUNNING, gdb.COMPLETE_NONE)  # guest paths, not ours

    def invoke(self, argument: str, from_tty: bool) -> None:
        argument = argument.strip()
        if not argument:
            raise gdb.GdbError("guest: expected a command (see `help guest`)")
        try:
            self._invoke(argument)
        except ShellUnreachable as exc:
            raise gdb.GdbError(f"guest: {exc}") from None
        except KeyboardInterrupt:
            raise gdb.GdbError("guest: interrupted") from None

    def _invoke(self, argument: str) -> None:
        require_stopped_guest("guest")
        path = gdb.parameter("kmemgdb shell-socket") or ""
        if not path:
            raise gdb.GdbError("guest: no guest shell: `set kmemgdb shell-socket PATH` "
                               "(`kmemgdb gdb` sets it)")
        console = SHELL.ensure(path)
        if argument in ("--wait", "--kill"):
            if SHELL.pending is None:
                raise gdb.GdbError(f"guest {argument}: no command is running in the guest")
            if argument == "--kill":
                # ^C ends the whole command line, its end marker too: a fresh one follows it.
                console.send("\x03")
                killed = SHELL.command
                SHELL.start("true", killed)
                self._follow()
                gdb.write(f"guest: `{killed}` ended by Ctrl-C\n")
                return
        elif argument.startswith("--"):
            raise gdb.GdbError(f"guest: unknown option {argument.split()[0]!r} (see `help guest`)")
        elif SHELL.pending is not None:
            raise gdb.GdbError(f"guest: `{SHELL.command}` is still running in the guest: "
                               "`guest --wait` or `guest --kill` first")
        else:
            SHELL.start(argument, argument)
        self._follow()

    def _follow(self) -> None:
        status = Streamer(SHELL).run()
        if status is None:
            if SHELL.console is None or SHELL.console.closed:
                SHELL.close()
                raise gdb.GdbError("guest: the guest shell went away")
            gdb.write(f"guest: the guest stopped before `{SHELL.command}` ended; `guest --wait` "
                      "lets it go on, `guest --kill` ends it\n")
            return
        command, SHELL.pending = SHELL.command, None
        gdb.set_convenience_variable("_guest_status", status)
        if status != 0:
            raise gdb.GdbError(f"guest: `{command}` exited with status {status}")


def register() -> None:
    ShellSocket()
    Guest()
