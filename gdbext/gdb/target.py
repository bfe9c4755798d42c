"""The remote target as kmemgdb needs it: state, registers, TLB flush, memory through the stub."""
from __future__ import annotations

import gdb

from ..core.paging import PWT

MASK64 = (1 << 64) - 1

# Guest stops taken by kmemgdb's own silent breakpoints (each costs ~3.4 ms of QEMU time).
HOOK_STOPS = [0]


class TargetError(gdb.GdbError):
    pass


def connected() -> bool:
    inferior = gdb.selected_inferior()
    return getattr(inferior, "connection", None) is not None and inferior.pid != 0


def stopped() -> bool:
    thread = gdb.selected_thread()
    return thread is not None and thread.is_stopped()


def register(name: str) -> int:
    """Value of register NAME of the current vCPU (cr3, rip, ...), as an unsigned int."""
    return int(gdb.newest_frame().read_register(name)) & MASK64


def set_register(name: str, value: int) -> None:
    # GDB 13 has no Frame.write_register; the cast keeps control registers from being rejected,
    # while eflags (a flags type) takes a plain number and refuses the cast.
    cast = "" if name == "eflags" else "(long)"
    gdb.execute(f"set ${name} = {cast}{value & MASK64:#x}", to_string=True)


class RawRegisters:
    """Registers of the stopped vCPU from one `g` packet, at the offsets gdb's own table gives
    (`maint print remote-registers`): about 0.1 ms, where building a frame to read them costs
    several times that on the per-access path of kmemcheck."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.layout: dict[str, tuple[int, int]] | None = None

    def _load_layout(self) -> dict[str, tuple[int, int]]:
        table = gdb.execute("maint print remote-registers", to_string=True).splitlines()
        layout = {}
        for row in table[1:]:
            cols = row.split()
            if len(cols) >= 7 and cols[0] in self.names and cols[-1].isdigit():
                layout[cols[0]] = (int(cols[-1]), int(cols[4]))
        missing = set(self.names) - set(layout)
        if missing:
            raise TargetError(f"the remote target does not expose {', '.join(sorted(missing))}")
        return layout

    def read(self) -> dict[str, int]:
        if self.layout is None:
            self.layout = self._load_layout()
        reply = gdb.execute("maint packet g", to_string=True)
        start = reply.index('received: "') + len('received: "')
        data = bytes.fromhex(reply[start:reply.index('"', start)])
        return {name: int.from_bytes(data[off:off + size], "little")
                for name, (off, size) in self.layout.items()}


CR0_PG = 1 << 31


def paging_on() -> bool:
    """The guest kernel has started (a QEMU started with -S has not: its RAM is still empty)."""
    return bool(register("cr0") & CR0_PG)


# Register numbers of QEMU's x86-64 target description (P packets).
RAW_REGNUM = {"rax": 0, "rcx": 2, "rsp": 7, "rip": 16}


def set_raw(values: dict[str, int]) -> None:
    """Write registers with raw P packets and drop gdb's register cache, so gdb re-reads them
    before resuming. Inside a breakpoint's stop() this is the way that holds (a `set $pc`
    there is lost), and it is much cheaper: no parsing, notifications or frame re-reads."""
    for name, value in values.items():
        gdb.execute(f"maint packet P{RAW_REGNUM[name]:x}={(value & MASK64).to_bytes(8, 'little').hex()}",
                    to_string=True)
    gdb.execute("maint flush register-cache", to_string=True)


def set_pc(value: int) -> None:
    set_raw({"rip": value})


def flush_tlb() -> None:
    """Make QEMU drop its software TLB for this vCPU.

    QEMU flushes on every cr3 write, but gdb skips a write of the cached value, so write cr3
    with PWT toggled and then the original value: two real writes, two flushes.
    """
    cr3 = register("cr3")
    set_register("cr3", cr3 ^ PWT)
    set_register("cr3", cr3)


def flush_tlb_all() -> None:
    """flush_tlb() on every vCPU (gdb thread); not for use inside a breakpoint's stop()."""
    selected = gdb.selected_thread()
    try:
        for thread in gdb.selected_inferior().threads():
            thread.switch()
            flush_tlb()
    finally:
        if selected is not None:
            selected.switch()


class StubPhysicalMemory:
    """Guest physical memory through QEMU's gdbstub physical mode (slow: packets per read)."""

    def _with_phys_mode(self, fn):
        gdb.execute("maint packet Qqemu.PhyMemMode:1", to_string=True)
        try:
            return fn(gdb.selected_inferior())
        finally:
            gdb.execute("maint packet Qqemu.PhyMemMode:0", to_string=True)

    def read(self, paddr: int, size: int) -> bytes:
        try:
            return self._with_phys_mode(lambda inf: bytes(inf.read_memory(paddr, size)))
        except gdb.MemoryError as exc:
            from ..core.memory import PhysicalAddressError
            raise PhysicalAddressError(paddr, size) from exc

    def write(self, paddr: int, data: bytes) -> None:
        self._with_phys_mode(lambda inf: inf.write_memory(paddr, data))
