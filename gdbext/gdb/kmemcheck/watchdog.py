"""The watchdog thread: samples the guest's clock through the RAM file while it runs, and stops
it (a Ctrl-C to gdb itself) when core/watchdog.py says it makes no progress. The diagnosis and
the turn-off happen at the next prompt, where the guest is stopped."""
from __future__ import annotations

import os
import signal
import threading
import time

import gdb

from ...core.watchdog import Watchdog
from .. import hooks
from ..session import SESSION

PERIOD = 0.5


class WatchdogThread:
    def __init__(self, limit: float):
        self.dog = Watchdog(limit)
        self.lock = threading.Lock()
        self.reason: str | None = None
        self.done = threading.Event()
        self.jiffies = self._jiffies_reader()
        gdb.events.cont.connect(self.on_cont)
        gdb.events.stop.connect(self.on_stop)
        self.thread = threading.Thread(target=self._loop, name="kmemcheck-watchdog", daemon=True)
        self.thread.start()

    def _jiffies_reader(self):
        """jiffies_64 straight from guest RAM (no stop, no packet); None without the RAM file."""
        if not SESSION.ram_file_active():
            return None
        paddr = SESSION.vmem().to_phys(SESSION.layout().sym("jiffies_64"))
        phys = SESSION.phys()
        return lambda: int.from_bytes(phys.read(paddr, 8), "little")

    def fault(self, now: float, signature: object) -> None:
        with self.lock:
            self.dog.fault(now, signature)

    def on_cont(self, _event) -> None:
        with self.lock:
            self.dog.resumed(time.monotonic())

    def on_stop(self, _event) -> None:
        with self.lock:
            self.dog.stopped()

    def _loop(self) -> None:
        while not self.done.wait(PERIOD):
            with self.lock:
                self.dog.hook(hooks.RUNNING[0])
                reason = self.dog.check(time.monotonic(), self.jiffies() if self.jiffies else None)
            if reason:
                self.reason = reason
                os.write(1, f"\nkmemgdb: kmemcheck watchdog: no progress for "
                            f"{self.dog.limit:g} s: {reason}; stopping the guest\n".encode())
                os.kill(os.getpid(), signal.SIGINT)        # what a Ctrl-C at gdb's terminal does
                return

    def close(self) -> None:
        self.done.set()
        for registry, fn in ((gdb.events.cont, self.on_cont), (gdb.events.stop, self.on_stop)):
            try:
                registry.disconnect(fn)
            except (ValueError, RuntimeError):
                pass
