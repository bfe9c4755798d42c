"""A gdb unwinder for the kernel's assembly entry stubs (x86-64, Linux 6.1).

The exception, interrupt and syscall entry code (`asm_exc_page_fault`, `asm_sysvec_*`,
`asm_common_interrupt`, `entry_SYSCALL_64`, ...: arch/x86/entry/entry_64.S and the idtentry
macros of arch/x86/include/asm/idtentry.h) has no DWARF CFI, so gdb cannot step from a handler
back into the code the exception interrupted. These stubs save every register of that code in a
`struct pt_regs` on the stack and call the C handler with `movq %rsp, %rdi; call cfunc`: at the
return address of that call the stack pointer is the pt_regs address. This unwinder reads the
interrupted code's registers from there, so `bt` at a breakpoint in the page-fault handler goes on
into the function that faulted and its callers, and `frame N` / `info locals` work there.

A frame stopped on the first instruction of an idtentry stub (`break *asm_exc_page_fault`) is
unwound from the hardware exception frame at the stack pointer instead.

The interrupted frame's $pc is the saved ip + 1 (for kernel-mode contexts). gdb 13's Python
unwinders make ordinary frames, and gdb treats the pc of the frame above an ordinary frame as a
return address: it looks up that frame's function, line, CFI and variable locations at pc - 1.
The saved ip is not a return address but the faulting (or next) instruction, often the first
instruction of a function (`mov 0x10(%rdi),%eax` at f+0 in a -O2 kernel without frame
pointers), where pc - 1 would name the previous function. With ip + 1, everything gdb derives is
looked up at the instruction itself; the instruction is at `$pc - 1` (and in pt_regs->ip).
EntryUnwinder.exact_pc = True reports the saved ip unchanged instead. User-mode contexts
(syscalls, whose saved ip follows the `syscall` instruction) are always reported exactly.
"""
from __future__ import annotations

import gdb
from gdb.unwinder import Unwinder, register_unwinder

from ..core.symbols import SymbolTable
from .session import SESSION
from .types import member_offset

NAME = "kmemgdb-entry"
CALL_REL32 = 0xE8
USER_TOP = 1 << 47

# struct pt_regs member -> gdb register (x86-64 6.1: r15 first, ss last, 168 bytes).
PT_REGS = {"r15": "r15", "r14": "r14", "r13": "r13", "r12": "r12", "bp": "rbp", "bx": "rbx",
           "r11": "r11", "r10": "r10", "r9": "r9", "r8": "r8", "ax": "rax", "cx": "rcx",
           "dx": "rdx", "si": "rsi", "di": "rdi", "ip": "rip", "cs": "cs", "flags": "eflags",
           "sp": "rsp", "ss": "ss"}
PT_REGS_FALLBACK = {name: 8 * i for i, name in enumerate(
    ["r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si",
     "di", "orig_ax", "ip", "cs", "flags", "sp", "ss"])}
PT_REGS_SIZE = 168
GPRS = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
        "r14", "r15"]
# Registers the entry code does not change for kernel-mode interrupted code: passed through.
PASS_THROUGH = ["ds", "es", "fs", "gs", "fs_base", "gs_base", "k_gs_base", "cr0", "cr2", "cr3",
                "cr4", "cr8", "efer"]
STUB_PREFIXES = ("asm_exc_", "asm_sysvec_", "asm_common_interrupt", "asm_spurious_interrupt",
                 "entry_SYSCALL_64", "entry_SYSCALL_compat", "entry_INT80_compat")
KERNEL_CS, USER_CS, USER32_CS = 0x10, 0x33, 0x23


class FrameId:
    """gdb 13 takes any object with sp and pc attributes as a frame id (gdb.Values: plain ints
    are refused with "frame_id should have 'sp' attribute")."""

    def __init__(self, sp: int, pc: int):
        self.sp = gdb.Value(sp & 0xFFFF_FFFF_FFFF_FFFF)
        self.pc = gdb.Value(pc & 0xFFFF_FFFF_FFFF_FFFF)


class _Stubs:
    """Entry code of one vmlinux: the .entry.text range and the sized stub symbols in it."""

    def __init__(self, table: SymbolTable):
        self.table = table
        start = table.by_name.get("__entry_text_start")
        end = table.by_name.get("__entry_text_end")
        stubs = [s for s in table.symbols if s.size and s.name.startswith(STUB_PREFIXES)]
        if start is not None and end is not None and start.addr < end.addr:
            self.lo, self.hi = start.addr, end.addr
        elif stubs:
            self.lo = min(s.addr for s in stubs)
            self.hi = max(s.addr + s.size for s in stubs)
        else:
            self.lo = self.hi = 0
        self.stubs = sorted((s.addr, s.addr + s.size, s.name) for s in stubs)

    def stub_at(self, pc: int):
        for start, end, name in self.stubs:
            if start <= pc < end:
                return start, name
        return None

    def in_entry_text(self, addr: int) -> bool:
        return self.lo <= addr < self.hi


class EntryUnwinder(Unwinder):
    def __init__(self):
        super().__init__(NAME)
        self._stubs: _Stubs | None = None
        self._offsets: dict[str, int] | None = None
        self._types: dict[str, gdb.Type | None] = {}
        self.exact_pc = False    # see the module docstring
        self.errors = 0          # exceptions swallowed (an unwinder must never raise)
        self.last_error = ""

    # -- lazily found facts --------------------------------------------------------------------
    def stubs(self) -> _Stubs | None:
        try:
            table = SESSION.symbolizer().kernel
        except Exception:          # no vmlinux yet: nothing to unwind
            return None
        if self._stubs is None or self._stubs.table is not table:
            self._stubs = _Stubs(table)
            self._offsets = None
        return self._stubs

    def offsets(self) -> dict[str, int]:
        if self._offsets is None:
            try:
                self._offsets = {m: member_offset(f"pt_regs.{m}") for m in PT_REGS}
            except Exception:
                self._offsets = {m: PT_REGS_FALLBACK[m] for m in PT_REGS}
        return self._offsets

    def _regtype(self, pending, name: str):
        if name not in self._types:
            try:
                self._types[name] = pending.read_register(name).type
            except (ValueError, gdb.error):
                self._types[name] = None
        return self._types[name]

    # -- gdb calls this for every frame it unwinds -------------------------------------------------
    def __call__(self, pending):
        try:
            return self._unwind(pending)
        except Exception as exc:   # gdb.error, gdb.MemoryError, ...: let gdb's unwinders try
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return None

    def _unwind(self, pending):
        pc = int(pending.read_register("rip")) & 0xFFFF_FFFF_FFFF_FFFF
        stubs = self.stubs()
        if stubs is None or not stubs.in_entry_text(pc):
            return None
        stub = stubs.stub_at(pc)
        if stub is None:
            return None
        start, name = stub
        sp = int(pending.read_register("rsp")) & 0xFFFF_FFFF_FFFF_FFFF
        inferior = gdb.selected_inferior()
        if pc == start:
            return self._from_hardware_frame(pending, inferior, start, sp)
        # A return address right after `call cfunc` (a C handler, outside the entry text):
        # rsp is the pt_regs address.
        before = bytes(inferior.read_memory(pc - 5, 5))
        if before[0] != CALL_REL32:
            return None
        target = (pc + int.from_bytes(before[1:], "little", signed=True)) & 0xFFFF_FFFF_FFFF_FFFF
        if stubs.in_entry_text(target):
            return None            # error_entry, paranoid_entry: pt_regs not complete there
        return self._from_pt_regs(pending, inferior, start, sp)

    def _from_pt_regs(self, pending, inferior, stub: int, regs_addr: int):
        offsets = self.offsets()
        raw = bytes(inferior.read_memory(regs_addr, PT_REGS_SIZE))
        vals = {PT_REGS[m]: int.from_bytes(raw[o:o + 8], "little") for m, o in offsets.items()}
        if not _plausible(vals["cs"], vals["eflags"], vals["rip"]):
            return None
        info = pending.create_unwind_info(FrameId(regs_addr + PT_REGS_SIZE, stub))
        vals["rip"] = self._frame_pc(vals["rip"], vals["cs"])
        for reg, value in vals.items():
            self._save(pending, info, reg, value)
        self._pass_through(pending, info, user=vals["cs"] & 3 == 3)
        return info

    def _from_hardware_frame(self, pending, inferior, stub: int, sp: int):
        code = bytes(inferior.read_memory(stub, 16))
        error_code = _has_error_code(code)
        if error_code is None:
            return None
        hw = sp + 8 * error_code
        raw = bytes(inferior.read_memory(hw, 40))
        rip, cs, flags, rsp, ss = (int.from_bytes(raw[i:i + 8], "little") for i in range(0, 40, 8))
        if not _plausible(cs, flags, rip):
            return None
        info = pending.create_unwind_info(FrameId(hw + 40, stub))
        saved = {"rip": self._frame_pc(rip, cs), "cs": cs, "eflags": flags, "rsp": rsp, "ss": ss}
        for reg, value in saved.items():
            self._save(pending, info, reg, value)
        for reg in GPRS:
            info.add_saved_register(reg, pending.read_register(reg))
        self._pass_through(pending, info, user=cs & 3 == 3)
        return info

    def _frame_pc(self, ip: int, cs: int) -> int:
        return ip if self.exact_pc or cs != KERNEL_CS else ip + 1

    def _save(self, pending, info, reg: str, value: int) -> None:
        rtype = self._regtype(pending, reg)
        if rtype is None:
            return
        size = rtype.sizeof
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        info.add_saved_register(reg, gdb.Value(data, rtype))

    def _pass_through(self, pending, info, user: bool) -> None:
        for reg in PASS_THROUGH:
            if self._regtype(pending, reg) is None:
                continue
            source = reg
            if user and reg in ("gs_base", "k_gs_base"):   # swapgs on entry from user mode
                source = "k_gs_base" if reg == "gs_base" else "gs_base"
            info.add_saved_register(reg, pending.read_register(source))


def _plausible(cs: int, flags: int, rip: int) -> bool:
    """A saved CPU context: known code segment, EFLAGS bit 1 set and no bits above 21, and a
    kernel pc for kernel mode (a canonical user pc for user mode)."""
    if flags & 2 == 0 or flags >> 22:
        return False
    if cs == KERNEL_CS:
        return rip >= 0xFFFF_8000_0000_0000
    if cs in (USER_CS, USER32_CS):
        return rip < USER_TOP
    return False


def _has_error_code(code: bytes) -> int | None:
    """1 if an idtentry stub starting with CODE is entered with a hardware error code on the stack,
    0 if it pushes the -1 ORIG_RAX itself, None if it is not that kind of stub (NMI, syscall)."""
    i = 4 if code.startswith(b"\xf3\x0f\x1e\xfa") else 0          # endbr64
    if code[i:i + 3] not in (b"\x0f\x01\xca", b"\x90\x90\x90", b"\x0f\x1f\x00"):  # ASM_CLAC
        return None
    i += 3
    if code[i:i + 1] != b"\xfc":                                        # cld
        return None
    i += 1
    if code[i:i + 2] == b"\x6a\xff":                                    # pushq $-1
        return 0
    if code[i:i + 1] == bytes([CALL_REL32]):                            # call error_entry
        return 1
    return None


UNWINDER = EntryUnwinder()


def interrupted_pc(frame: gdb.Frame) -> int | None:
    """The saved ip (pt_regs->ip) when FRAME is code an exception or interrupt stopped, i.e. its
    newer frame is an entry stub; None for other frames. FRAME.pc() is that ip + 1 for kernel
    code (see the module docstring), so compare faulting pcs with this, not with frame.pc()."""
    try:
        newer = frame.newer()
        if newer is None:
            return None
        stubs = UNWINDER.stubs()
        if stubs is None or stubs.stub_at(newer.pc()) is None:
            return None
        pc = frame.pc()
        if not UNWINDER.exact_pc and int(frame.read_register("cs")) & 0xFFFF == KERNEL_CS:
            pc -= 1
        return pc
    except (gdb.error, ValueError, RuntimeError):
        return None


def register() -> None:
    """Install the unwinder for every objfile (idempotent)."""
    register_unwinder(None, UNWINDER, replace=True)
