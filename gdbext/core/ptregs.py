"""struct pt_regs of x86-64 (arch/x86/include/asm/ptrace.h): the registers of an interrupted
context, saved by the kernel's exception entry code. kmemcheck reads the faulting context from it
and completes the instruction by writing the changed registers back, so the kernel's own
exception exit restores them: no debugger register writes per access."""
from __future__ import annotations

import struct

# Member order of struct pt_regs (unchanged since 2.6.25); the glue checks it against DWARF.
FIELDS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
          "rdx", "rsi", "rdi", "orig_ax", "rip", "cs", "rflags", "rsp", "ss")
DWARF_NAMES = {"rbp": "bp", "rbx": "bx", "rax": "ax", "rcx": "cx", "rdx": "dx", "rsi": "si",
               "rdi": "di", "rip": "ip", "rflags": "flags", "rsp": "sp"}
SIZE = 8 * len(FIELDS)
OFFSET = {name: 8 * i for i, name in enumerate(FIELDS)}
KERNEL_CS = 0x10
_LAYOUT = struct.Struct(f"<{len(FIELDS)}Q")


def unpack(raw: bytes) -> dict[str, int]:
    return dict(zip(FIELDS, _LAYOUT.unpack(raw[:SIZE])))


def changed_fields(old: dict[str, int], new: dict[str, int]) -> list[tuple[int, bytes]]:
    """(offset, 8 bytes) of every saved register whose value differs."""
    return [(OFFSET[name], struct.pack("<Q", new[name] & (1 << 64) - 1))
            for name in FIELDS if name in new and new[name] != old[name]]


def looks_like_kernel_frame(regs: dict[str, int]) -> bool:
    """The saved frame of a kernel-mode exception: kernel CS, kernel RIP, RFLAGS bit 1 set."""
    return regs["cs"] == KERNEL_CS and regs["rip"] >> 47 == (1 << 17) - 1 and bool(regs["rflags"] & 2)
