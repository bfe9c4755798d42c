"""`kmem fail-alloc`: the Nth allocation a module makes returns NULL, decided from the host.

A hook sits on each call (and tail-call jump) from the module's code to an allocation helper
(allocsites.HELPERS). At the Nth, the call is not made: rax = NULL and the vCPU continues
after it (after a tail call: at its return address, as the helper's `ret` would), which is
what the module sees when the allocator fails. One stop per allocation the module makes, and
only while a plan is set. Only the Nth call fails: busybox's insmod retries a module whose
finit_module() failed with init_module(), and that second load then succeeds (the first
one's leaks stay, and are reported).
"""
from __future__ import annotations

import gdb

from ..core.allocsites import HELPERS, FailurePlan
from . import target
from .callsites import Call, CallWatch
from .callstack import stack_backtrace
from .symbolize import frame_for


class FailAlloc:
    def __init__(self):
        self.plan: FailurePlan | None = None
        self.watch: CallWatch | None = None

    def start(self, module: str, nth: int) -> None:
        self.stop()
        self.plan = FailurePlan(module, nth)
        self.watch = CallWatch("fail-alloc", HELPERS, self._on_call, kernel=False,
                               module_names={module})
        self.watch.install()

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.remove()
        self.watch = None

    def _on_call(self, call: Call) -> bool:
        plan = self.plan
        if plan is None or not plan.count():
            return False
        back = call.returns_to
        stack = stack_backtrace(back, call.regs["rsp"] + 8 * call.tail)
        plan.injected = {"function": call.function, "site": call.site,
                         "backtrace": [frame_for(pc).to_json() for pc in stack]}
        target.set_raw({"rax": 0, "rip": back, **({"rsp": call.regs["rsp"] + 8} if call.tail else {})})
        gdb.write(f"kmemgdb: fail-alloc: allocation {plan.nth} of module {plan.module} "
                  f"({call.function} at {gdb.format_address(call.site)}) fails\n")
        return False


FAIL_ALLOC = FailAlloc()
