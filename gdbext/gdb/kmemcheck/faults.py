"""The page-fault hook, instruction completion, single-steps and verify mode.

One silent breakpoint sits at spurious_kernel_fault(), the first thing the kernel calls for a
fault on a kernel address (arch/x86/mm/fault.c, 6.1), so user-space page faults never stop the
guest. For a fault on a page kmemcheck hid, the faulting context is read from the struct pt_regs
the entry code saved, the instruction is completed on the host by editing that pt_regs in guest
RAM, and spurious_kernel_fault is made to return 1 by moving rip to a `mov eax,1; ret` in kernel
text: the kernel's own exception exit then resumes the interrupted code after the instruction.
One guest stop and one register write per tracked access.

Instructions the host cannot emulate are single-stepped by the guest itself: the pages they
touch are shown, TF is set in the saved flags, and the #DB that follows the instruction is
caught at exc_debug(), where the pages are hidden again and the trap undone in the saved flags.
Verify mode steps host-completed instructions the same way and compares.

Hook sites are chosen away from hot code: QEMU runs every instruction of a 4 KiB page holding a
breakpoint as its own translation block, so a hook on the syscall entry page (asm_exc_debug) or
on kfree's page would slow down the whole guest.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import gdb

from ...core import ptregs
from ...core.codescan import RETURN_ONE
from ...core.heap.context import PAGE_SIZE, STRUCT_PAGE_SIZE
from ...core.inflight import STACK_BYTES, FaultPath
from ...core.kmemcheck import FaultOutcome, Finding, KmemcheckError
from ...core.lifetimes import LARGE, Region
from ...core.render import Painter
from ...core.kmemcheck_report import render_finding
from ...core.verify import NativeCheck, native_check
from .. import settings, target
from ..callstack import read_stack
from ..hooks import record_error
from ..session import SESSION

MASK64 = (1 << 64) - 1
TF = 1 << 8
FAULT_REGISTERS = target.RawRegisters(("rsi", "rsp", "fs_base", "gs_base"))
TRAP_REGISTERS = target.RawRegisters(("rdi",))
# Steps allowed to bring a vCPU from inside the page-fault entry to the fault hook (about 100
# instructions are needed; the bound keeps a wrong guess from stepping for long).
MAX_DRAIN_STEPS = 1000
FAULT_PATH_FUNCTIONS = ("asm_exc_page_fault", "error_entry", "exc_page_fault")


@dataclass
class Step:
    """An instruction the guest runs itself with PAGES shown, trapping after it."""
    pages: list[int]
    rflags: int                       # the saved flags before TF was set
    check: NativeCheck | None = None  # verify mode: what the step must produce
    host: FaultOutcome | None = None  # ... and the host's whole result, for a rep left unfinished


class Faults:
    def __init__(self, armed):
        self.armed = armed
        self.engine = armed.engine
        self.steps: list[Step] = []       # innermost last: an interrupt may nest a second one
        self.regs_offset: int | None = None   # pt_regs - rsp at spurious_kernel_fault
        self.handled = 0
        table = SESSION.symbolizer().kernel
        path = [table.by_name[name] for name in FAULT_PATH_FUNCTIONS if name in table.by_name]
        self.fault_path = FaultPath(tuple((sym.addr, sym.addr + sym.size) for sym in path))
        self.fault_hook = armed.hook("spurious_kernel_fault", self.on_fault)
        self.trap_hook = armed.hook("exc_debug", self.on_debug_trap)
        self.addresses = {self.fault_hook: table.by_name["spurious_kernel_fault"].addr,
                          self.trap_hook: table.by_name["exc_debug"].addr}

    # -- the fault ---------------------------------------------------------------------------
    def on_fault(self) -> bool:
        registers = FAULT_REGISTERS.read()
        addr = registers["rsi"]           # spurious_kernel_fault(error_code, address)
        region = self.engine.region_of(addr)
        if region is None:
            return False                 # not ours: the kernel handles it
        self.handled += 1
        engine, armed = self.engine, self.armed
        try:
            regs_addr, saved, regs, code = self._context(registers)
            if not self._still_ours(addr, region):
                self._report(engine.lost_access(regs, code, region))
                armed.slabs.forget(region)
                self._log(addr, regs, code, "lost")
                return False             # the kernel takes the fault as it would have
            outcome = engine.handle(regs, code)
            self._log(addr, regs, code, "stepped" if outcome.regs is None else
                      "verified" if self._verifying() else "emulated")
            self._complete(regs_addr, saved, regs, code, outcome)
        except KeyboardInterrupt:
            raise
        except Exception as exc:         # never leave the guest faulting on a hidden page
            record_error(f"kmemcheck: internal error at {addr:#x}: {type(exc).__name__}: {exc}")
            armed.turn_off_here("turned off after an internal error; every page shown again")
            target.set_pc(armed.gadget)
            return False
        self._report(outcome.findings)
        return False

    def _context(self, registers):
        memory = self.engine.memory
        regs_addr = self._pt_regs(registers["rsp"])
        saved = ptregs.unpack(memory.read(regs_addr, ptregs.SIZE))
        regs = dict(saved, fs_base=registers["fs_base"], gs_base=registers["gs_base"])
        return regs_addr, saved, regs, memory.read(regs["rip"], 16)

    def _still_ours(self, addr: int, region: Region) -> bool:
        """The page is as kmemgdb hid it, or the guest changed only its flags; not when the
        guest freed or remapped it (debug_pagealloc unmaps freed pages, vfree clears PTEs)."""
        page = addr & ~(PAGE_SIZE - 1)
        pages = self.armed.pages
        if pages.owns(page):
            return True
        if page not in pages.pages or region.kind == LARGE and not self._pages_in_use(region):
            return False
        return pages.hidden.readopt(page)

    def _pages_in_use(self, region: Region) -> bool:
        ctx = self.armed.ctx
        head = ctx.vmemmap + ctx.direct_paddr(region.start) // PAGE_SIZE * STRUCT_PAGE_SIZE
        refcount = ctx.u64(head + ctx.layout.off("page._refcount")) & 0xFFFFFFFF
        return refcount != 0

    def _verifying(self) -> bool:
        return self.armed.checker.options.verify and not self.steps

    def _complete(self, regs_addr: int, saved: dict, regs: dict, code: bytes,
                  outcome: FaultOutcome) -> None:
        """Change the guest in one Commit: staged memory writes, the saved registers, pages
        released, and rip (spurious_kernel_fault returns 1); or a native step."""
        memory = self.engine.memory
        if outcome.regs is not None and self._verifying():
            check = native_check(code, regs, outcome.regs, outcome.writes, memory)
            steps = [lambda: self._step_natively(regs_addr, saved, outcome, check)]
        elif outcome.regs is None:
            steps = [lambda: self._step_natively(regs_addr, saved, outcome, None)]
        else:
            steps = [lambda w=w: memory.write(*w) for w in outcome.writes]
            steps += [lambda f=f: memory.write(regs_addr + f[0], f[1])
                      for f in ptregs.changed_fields(saved, outcome.regs)]
            steps += [lambda: self._show(outcome.release)]
        if outcome.turn_off:
            steps.append(lambda: self.armed.turn_off_here("one-shot report done, turning off"))
        steps.append(lambda: target.set_pc(self.armed.gadget))
        self.armed.run_commit(steps)

    def _show(self, pages: list[int]) -> None:
        for page in pages:
            self.armed.pages.show(page)

    def _step_natively(self, regs_addr: int, saved: dict, outcome: FaultOutcome,
                       check: NativeCheck | None) -> None:
        """Let the guest run the instruction itself with its pages shown, trapping after it."""
        pages = sorted(set(outcome.touched) | set(outcome.release))
        self._show(pages)
        self.engine.memory.write(regs_addr + ptregs.OFFSET["rflags"],
                                 (saved["rflags"] | TF).to_bytes(8, "little"))
        self.steps.append(Step(pages, saved["rflags"], check, outcome if check else None))

    def _pt_regs(self, rsp: int) -> int:
        """Where the entry code saved the faulting context, relative to rsp at
        spurious_kernel_fault: found once by its shape, then checked each time."""
        memory = self.engine.memory
        if self.regs_offset is not None:
            regs = ptregs.unpack(memory.read(rsp + self.regs_offset, ptregs.SIZE))
            if ptregs.looks_like_kernel_frame(regs):
                return rsp + self.regs_offset
        raw = memory.read(rsp, 4096 - (rsp & 0xFFF) if (rsp & 0xFFF) > 2048 else 2048)
        for off in range(0, len(raw) - ptregs.SIZE + 1, 8):
            regs = ptregs.unpack(raw[off:off + ptregs.SIZE])
            if (regs["orig_ax"] == MASK64 and ptregs.looks_like_kernel_frame(regs)
                    and regs["rsp"] in (rsp + off + ptregs.SIZE, rsp + off + ptregs.SIZE + 8)):
                self.regs_offset = off
                return rsp + off
        raise KmemcheckError(f"no struct pt_regs found above rsp {rsp:#x}")

    # -- the trap after a native step ---------------------------------------------------------
    def on_debug_trap(self) -> bool:
        """exc_debug(struct pt_regs *regs) after a natively stepped instruction: check it (verify
        mode), hide its pages again, restore TF in the saved flags, return from exc_debug."""
        if not self.steps:
            return False
        step = self.steps[-1]
        memory = self.engine.memory
        regs_addr = TRAP_REGISTERS.read()["rdi"]
        native = ptregs.unpack(memory.read(regs_addr, ptregs.SIZE))
        steps = []
        if step.check is not None:
            steps += self._checked(step, regs_addr, native)
        flags_at = regs_addr + ptregs.OFFSET["rflags"]
        steps += [lambda: self._hide_again(step.pages),
                  lambda: memory.write(flags_at, self._untrapped(flags_at, step.rflags)),
                  lambda: self.steps.pop(),
                  lambda: target.set_pc(self.armed.gadget + len(RETURN_ONE) - 1)]    # its `ret`
        self.armed.run_commit(steps)
        return False

    def _untrapped(self, flags_at: int, rflags: int) -> bytes:
        flags = int.from_bytes(self.engine.memory.read(flags_at, 8), "little")
        return ((flags & ~TF) | (rflags & TF)).to_bytes(8, "little")

    def _checked(self, step: Step, regs_addr: int, native: dict) -> list:
        """Compare the guest's step with the host's; then, for a rep instruction with
        iterations left, apply the host's result for the whole instruction."""
        memory = self.engine.memory
        differences = step.check.differences(native, memory.read)
        stats = self.engine.stats
        if differences:
            stats.mismatches += 1
            record_error(f"kmemcheck: {step.check.describe(differences)}")
            return []                     # the guest keeps its own result
        stats.verified += 1
        if not step.check.partial:
            return []
        host = step.host
        steps = [lambda w=w: memory.write(*w) for w in host.writes]
        wanted = dict(host.regs, rflags=(host.regs["rflags"] & ~TF) | (native["rflags"] & TF))
        steps += [lambda f=f: memory.write(regs_addr + f[0], f[1])
                  for f in ptregs.changed_fields(native, wanted)]
        return steps

    def _hide_again(self, pages: list[int]) -> None:
        hid = False
        for page in pages:
            if not self.armed.off and self.engine.tracked_page(page):
                if self.armed.pages.hide(page):
                    hid = True
                else:
                    self.engine.release(self.engine.region_of(page))
        if hid:
            self.armed.flush()

    # -- reports and the fault log -------------------------------------------------------------
    def _report(self, findings: list[Finding]) -> None:
        for finding in findings:
            gdb.write(render_finding(finding, Painter(settings.color_enabled())) + "\n")

    def _log(self, addr: int, regs: dict, code: bytes, action: str) -> None:
        now = time.monotonic()
        self.armed.log.add(now, addr, regs["rip"], code, action)
        watch = self.armed.watch
        if watch is not None:
            watch.fault(now, (addr, *regs.values()))     # the registers, in pt_regs order

    # -- stops that are not hook stops ---------------------------------------------------------
    def landed(self, pc: int) -> None:
        """A stop that is not one of our breakpoints (Ctrl-C, another breakpoint) can land on a
        hook's address before gdb ran the hook: a tracked fault would then reach the kernel
        unhandled when the guest goes on. Handle it now, as the breakpoint would have."""
        for hook, address in self.addresses.items():
            if hook.is_valid() and pc == address:
                hook.stop()

    def drain_in_flight(self) -> None:
        """Before pages are shown at a stop (not inside a hook): a vCPU stopped between a fault
        on a hidden page and the fault hook would take it to the kernel as a not-present fault,
        which the kernel never calls spurious (an oops). Step such vCPUs through the hook."""
        if not self.armed.pages.pages:
            return
        selected = gdb.selected_thread()
        try:
            for thread in gdb.selected_inferior().threads():
                thread.switch()
                if self._fault_in_flight():
                    self._drain_vcpu()
        except gdb.error as exc:          # no registers: the guest is gone or not stopped
            gdb.write(f"kmemcheck: could not check the vCPUs for a fault in flight: {exc}\n")
        finally:
            if selected is not None and selected.is_valid():
                selected.switch()

    def _drain_vcpu(self) -> None:
        """Step this vCPU, alone, until kmemcheck's fault hook has handled its fault."""
        hook = self.addresses[self.fault_hook]
        locking = gdb.parameter("scheduler-locking")
        gdb.execute("set scheduler-locking on", to_string=True)
        try:
            for _ in range(MAX_DRAIN_STEPS):
                handled = self.handled
                gdb.execute("stepi", to_string=True)
                if self.handled != handled:
                    return                # gdb ran the hook on the stepped-onto breakpoint
                if target.register("rip") == hook:
                    self.fault_hook.stop()
                    return
                if not self._fault_in_flight():
                    return
        finally:
            gdb.execute(f"set scheduler-locking {locking}", to_string=True)
        gdb.write(f"kmemcheck: a vCPU stayed in the page-fault entry for {MAX_DRAIN_STEPS} steps\n")

    def _fault_in_flight(self) -> bool:
        """This vCPU's last fault hit a hidden page and it is on the way to the hook."""
        cr2 = target.register("cr2")
        if (cr2 & ~(PAGE_SIZE - 1)) not in self.armed.pages.pages:
            return False
        stack = read_stack(self.engine.memory, target.register("rsp"), STACK_BYTES)
        return self.fault_path.may_be_in_flight(target.register("rip"), stack)
