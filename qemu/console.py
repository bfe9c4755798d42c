"""The guest's serial console: a log of everything it printed, waits, and shell commands."""
from __future__ import annotations

import itertools
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


class Console:
    """Collects the guest's console output (fed by the launcher's reader thread)."""

    def __init__(self, log_path: Path, write: Callable[[bytes], None]):
        self.log_path = log_path
        self._log: IO[str] = open(log_path, "w", encoding="utf-8", errors="replace")
        self._write = write
        self._text = ""
        self._cond = threading.Condition()
        self.closed = False

    # -- fed by the reader thread --------------------------------------------------------
    def feed(self, data: str) -> None:
        with self._cond:
            self._text += data.replace("\r", "")
            self._log.write(data.replace("\r", ""))
            self._log.flush()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
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

    def wait(self, timeout: float = 60,
             alive: Callable[[], None] | None = None) -> tuple[str, int]:
        """Wait for the command to end; return (output, exit status)."""
        begin = self.console.wait_for(rf"@@{self.tag}-begin@@\n", timeout, self.since, alive)
        end = self.console.wait_for(rf"@@{self.tag}:(\d+)@@", timeout, begin.end(), alive)
        return self.console.text[begin.end():end.start()], int(end.group(1))
