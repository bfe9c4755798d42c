"""Decode one x86-64 instruction into the memory accesses it makes, from register values.

kmemcheck needs every memory operand's address, size and direction; under TCG the page-fault
error code's write bit cannot be trusted, so the direction comes from the instruction itself
(capstone's operand access flags). String instructions (movs, stos, lods, cmps, scas) report one
iteration: with a rep prefix the rest is done one step at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

from capstone import CS_ARCH_X86, CS_MODE_64, Cs, CsError
from capstone import x86 as X

MASK64 = (1 << 64) - 1
READ, WRITE = 1, 2        # capstone's CS_AC_READ / CS_AC_WRITE
REP_PREFIXES = {X.X86_PREFIX_REP, X.X86_PREFIX_REPNE}
STRING_OPS = ("movs", "stos", "lods", "cmps", "scas", "ins", "outs")

_cs = Cs(CS_ARCH_X86, CS_MODE_64)
_cs.detail = True


class DecodeError(Exception):
    """The bytes at the faulting rip are not an instruction kmemgdb can analyse."""


@dataclass(frozen=True)
class Access:
    address: int
    size: int
    read: bool
    write: bool

    @property
    def kind(self) -> str:
        return "read-write" if self.read and self.write else "write" if self.write else "read"


@dataclass(frozen=True)
class Instruction:
    address: int
    length: int
    mnemonic: str
    text: str
    accesses: tuple[Access, ...]
    rep: bool

    @property
    def is_string(self) -> bool:
        return self.mnemonic.split()[-1].startswith(STRING_OPS)


_SUBREGISTERS = {}
for _r in ("ax", "bx", "cx", "dx", "si", "di", "sp", "bp"):
    _SUBREGISTERS["e" + _r] = ("r" + _r, 0xFFFFFFFF)
    _SUBREGISTERS[_r] = ("r" + _r, 0xFFFF)
for _n in range(8, 16):
    _SUBREGISTERS[f"r{_n}d"] = (f"r{_n}", 0xFFFFFFFF)
    _SUBREGISTERS[f"r{_n}w"] = (f"r{_n}", 0xFFFF)


def _register(name: str, regs: dict[str, int]) -> int:
    """Value of a register as capstone names it (32/16-bit forms from the 64-bit one)."""
    if name in regs:
        return regs[name]
    wide, mask = _SUBREGISTERS.get(name, (None, 0))
    if wide in regs:
        return regs[wide] & mask
    raise DecodeError(f"register {name} is not available")


def decode(code: bytes, rip: int, regs: dict[str, int]) -> Instruction:
    """Decode the instruction at RIP (CODE holds its bytes, 15 are enough) with REGS
    (rax..r15, rip, fs_base, gs_base)."""
    try:
        insn = next(_cs.disasm(code, rip, 1), None)
    except CsError as exc:
        raise DecodeError(f"cannot decode at {rip:#x}: {exc}") from None
    if insn is None:
        raise DecodeError(f"cannot decode {code[:15].hex()} at {rip:#x}")
    accesses = []
    for op in insn.operands:
        if op.type != X.X86_OP_MEM:
            continue
        mem = op.mem
        if insn.mnemonic in ("lea", "nop") or insn.mnemonic.startswith(("prefetch", "clflush")):
            continue                      # computes an address or only hints: no data access
        addr = mem.disp
        if mem.base:
            base = insn.reg_name(mem.base)
            addr += rip + insn.size if base == "rip" else _register(base, regs)
        if mem.index:
            addr += _register(insn.reg_name(mem.index), regs) * mem.scale
        if mem.segment in (X.X86_REG_FS, X.X86_REG_GS):
            addr += regs["fs_base" if mem.segment == X.X86_REG_FS else "gs_base"]
        accesses.append(Access(addr & MASK64, op.size, bool(op.access & READ), bool(op.access & WRITE)))
    rep = any(p in REP_PREFIXES for p in insn.prefix)
    return Instruction(rip, insn.size, insn.mnemonic, f"{insn.mnemonic} {insn.op_str}".strip(),
                       tuple(accesses), rep)
