"""Silent internal breakpoints: kmemgdb's way of running host code at a guest location."""
from __future__ import annotations

import gdb

from . import target


class SilentHook(gdb.Breakpoint):
    """An internal breakpoint whose stop() runs ACTION and lets the guest go on (a True result
    keeps it stopped). An error in ACTION is one line naming WHAT: a hook never stops the guest
    by raising. A Ctrl-C that gdb turns into KeyboardInterrupt inside ACTION is handed to
    INTERRUPTED (which must leave the guest consistent), and the guest stops as asked."""

    def __init__(self, spec: str, action, what: str, interrupted=None):
        super().__init__(spec, internal=True)
        self.silent = True
        self.action = action
        self.what = what
        self.interrupted = interrupted

    def stop(self) -> bool:
        target.HOOK_STOPS[0] += 1
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
            gdb.write(f"kmemgdb: {self.what}: {type(exc).__name__}: {exc}\n")
            return False
