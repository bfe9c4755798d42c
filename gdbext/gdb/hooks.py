"""Silent internal breakpoints: kmemgdb's way of running host code at a guest location.

An error inside a hook never stops the guest, but it is never silent either: it is printed and kept in ERRORS, which `kmem errors` shows and on which
`kmemgdb run` fails (a checker that failed inside a hook did not check what it claims to).
"""
from __future__ import annotations

import time
import traceback

import gdb

from . import target

ERRORS: list[str] = []
TRACEBACKS: list[str] = []      # beside ERRORS: where in kmemgdb each one happened
RUNNING: list[float | None] = [None]    # monotonic time the running hook started (watchdog)


def record_error(text: str) -> None:
    ERRORS.append(text)
    TRACEBACKS.append(traceback.format_exc())
    gdb.write(f"kmemgdb: {text}\n")


class SilentHook(gdb.Breakpoint):
    """An internal breakpoint whose stop() runs ACTION and lets the guest go on (a True result
    keeps it stopped). An error in ACTION is one line naming WHAT, kept in ERRORS. A Ctrl-C that gdb turns into KeyboardInterrupt inside
    ACTION is handed to INTERRUPTED (which must leave the guest consistent), and the guest
    stops as asked."""

    def __init__(self, spec: str, action, what: str, interrupted=None):
        super().__init__(spec, internal=True)
        self.silent = True
        self.action = action
        self.what = what
        self.interrupted = interrupted

    def stop(self) -> bool:
        target.HOOK_STOPS[0] += 1
        RUNNING[0] = time.monotonic()
        try:
            return bool(self.action())
        except KeyboardInterrupt:
            if self.interrupted is None:
                raise
            self.interrupted(self.action)
            pc = target.register("rip")
            gdb.write(f"kmemgdb: Ctrl-C inside the {self.what} hook: finished its work; "
                      f"the guest stopped at {gdb.format_address(pc)}\n")
            return True
        except Exception as exc:
            record_error(f"{self.what}: {type(exc).__name__}: {exc}")
            return False
        finally:
            RUNNING[0] = None

RETIRED: list[gdb.Breakpoint] = []


def retire(hook: gdb.Breakpoint) -> None:
    """Take HOOK out of the guest now and delete it at the next prompt. Called with the guest
    stopped, also inside a stop() (its own included): disabling removes the breakpoint from
    QEMU at once, but deleting a breakpoint while gdb handles a stop is not safe, and gdb
    cannot delete one while the guest runs."""
    if hook.is_valid():
        hook.enabled = False
        RETIRED.append(hook)


def delete_retired() -> None:
    """At a prompt: delete the hooks retire() took out."""
    while RETIRED:
        hook = RETIRED.pop()
        if hook.is_valid():
            hook.delete()
