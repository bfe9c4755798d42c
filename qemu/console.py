"""The guest's serial console: a log of everything it printed, waits, and shell commands."""
from __future__ import annotations

import codecs
import itertools
import os
import re
import threading
import time
from pathlib import Path
from typing import Callable, IO

# What a dying kernel prints; the launcher reports the console tail when one shows up.
CRASH_PATTERNS = re.compile(
    r"Kernel panic - not syncing|Oops: |BUG: |kernel BUG at |general protection fault|"
    r"Unable to handle kernel|unable to handle page fault")

_marker_ids = itertools.count(1)


class ConsoleError(Exception):
    """A wait on the console ended without what was expected."""


def pump(fd: int, console: Console, tap: Callable[[bytes], None] | None = None) -> None:
    """Feed CONSOLE (and TAP, the raw bytes) from FD until QEMU closes it."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        console.feed(decoder.decode(chunk))
        if tap:
            tap(chunk)
    console.close()


class Console:
    """Collects the guest's console output (fed by the launcher's reader thread)."""

    def __init__(self, log_path: Path | None, write: Callable[[bytes], None]):
        self.log_path = log_path
        self._log: IO[str] | None = (open(log_path, "w", encoding="utf-8", errors="replace")
                                     if log_path else None)
        self._write = write
        self._text = ""
        self._cond = threading.Condition()
        self.closed = False

    # -- fed by the reader thread --------------------------------------------------------
    def feed(self, data: str) -> None:
        with self._cond:
            self._text += data.replace("\r", "")
            if self._log:
                self._log.write(data.replace("\r", ""))
                self._log.flush()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            if self._log:
                self._log.close()
            self._cond.notify_all()

    # -- readers -------------------------------------------------------------------------
    @property
    def text(self) -> str:
        with self._cond:
            return self._text

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.text.rstrip("\n").splitlines()[-lines:])

    def crash(self) -> str | None:
        """The first crash line seen on the console, if any."""
        m = CRASH_PATTERNS.search(self.text)
        if not m:
            return None
        start = self.text.rfind("\n", 0, m.start()) + 1
        end = self.text.find("\n", m.end())
        return self.text[start:end if end >= 0 else None].strip()

    def wait_for(self, pattern: str, timeout: float, since: int = 0,
                 alive: Callable[[], None] | None = None) -> re.Match:
        """Wait until PATTERN appears after offset SINCE. ALIVE raises if the guest died."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = regex.search(self._text, since)
                if m:
                    return m
                if alive:
                    alive()        # raises when the guest died (also when the console closed)
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    why = "console closed" if self.closed else f"{timeout:.0f} s passed"
                    raise ConsoleError(f"guest did not print /{pattern}/ ({why}); console tail:\n"
                                       + self.tail())
                self._cond.wait(min(left, 0.5))

    def wait_change(self, since: int, timeout: float) -> None:
        """Return once the text grew past SINCE, the console closed, or TIMEOUT passed."""
        with self._cond:
            if len(self._text) <= since and not self.closed:
                self._cond.wait(timeout)

    # -- writers -------------------------------------------------------------------------
    def send(self, text: str) -> None:
        self._write(text.encode())

    def start_command(self, command: str) -> "Pending":
        """Type COMMAND into the guest shell without waiting for it (it may stop at a
        breakpoint first); Pending.wait() collects it."""
        tag = f"KMEMGDB{next(_marker_ids)}"
        since = len(self.text)
        # The shell echoes what it is sent; the quotes split the begin marker and `$?` is
        # unexpanded there, so both markers only match in what the shell really printed.
        self.send(f"echo \"@@{tag}\"\"-begin@@\"; {command}; echo \"@@{tag}:$?@@\"\n")
        return Pending(self, tag, since)

    def run(self, command: str, timeout: float = 60,
            alive: Callable[[], None] | None = None) -> tuple[str, int]:
        """Run COMMAND in the guest shell; return (output, exit status)."""
        return self.start_command(command).wait(timeout, alive)


class Pending:
    """A shell command typed in and not yet collected."""

    def __init__(self, console: Console, tag: str, since: int):
        self.console, self.tag, self.since = console, tag, since
        # What the shell prints around the output (its echo of the typed line matches neither).
        self._begin, self._end = rf"@@{tag}-begin@@\n", rf"@@{tag}:(\d+)@@"

    def wait(self, timeout: float = 60,
             alive: Callable[[], None] | None = None) -> tuple[str, int]:
        """Wait for the command to end; return (output, exit status)."""
        begin = self.console.wait_for(self._begin, timeout, self.since, alive)
        end = self.console.wait_for(self._end, timeout, begin.end(), alive)
        return self.console.text[begin.end():end.start()], int(end.group(1))

    def progress(self) -> tuple[str, int | None]:
        """(the output so far, the exit status or None while it runs), without waiting. The
        output stops at the last full line until the command ended: a line may be the start
        of the end marker."""
        text = self.console.text
        begin = re.compile(self._begin).search(text, self.since)
        if not begin:
            return "", None
        end = re.compile(self._end).search(text, begin.end())
        if end:
            return text[begin.end():end.start()], int(end.group(1))
        body = text[begin.end():]
        return body[:body.rfind("\n") + 1], None
