"""Complete one faulting x86-64 instruction on the host, by emulation.

kmemcheck hides pages from the guest (PTE present bit cleared). When the guest kernel faults on
one, the host performs the faulting instruction itself instead of single-stepping it: the
registers come from the kernel's ``struct pt_regs``, memory goes through an object that can reach
the hidden pages, and the changed registers are written back. :func:`emulate` does one
instruction exactly as a 64-bit-mode CPU would (kernel mode: no alignment checks, no I/O), and
reports every memory access it made so the caller can check it against the shadow map.

Only instructions with a memory operand that the kernel plausibly uses on heap data are
emulated; anything else raises :class:`Unsupported` and the caller falls back to
single-stepping. Decoding (capstone) happens once per distinct instruction bytes: the result is
compiled into a small closure and cached, since the same instruction faults again and again.

Conventions:

- ``regs`` holds 64-bit unsigned values for rax..r15, rip, rflags, fs_base and gs_base; the
  returned ``Effect.regs`` is a new dict with every key of the input, rip advanced (or set by
  call/jmp) and rflags updated.
- Memory accesses are reported as :class:`MemOp` in execution order, a read-modify-write as a
  read then a write of the same bytes. A rep string instruction is reported as one range per
  operand (the whole source, the whole destination), in the order a single iteration touches
  them.
- Addresses are linear: fs:/gs: overrides add fs_base/gs_base, rip-relative operands are relative
  to the next instruction, a 0x67 prefix computes the offset modulo 2**32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from capstone import CS_ARCH_X86, CS_MODE_64, Cs, CsError
from capstone import x86 as X

__all__ = ["Unsupported", "Memory", "MemOp", "Effect", "emulate", "alu_add", "alu_sub",
           "alu_logic", "alu_inc", "alu_dec", "alu_neg", "condition", "merge_flags", "parity",
           "CF", "PF", "AF", "ZF", "SF", "DF", "OF", "STATUS_FLAGS", "Facts", "facts"]

MASK64 = (1 << 64) - 1
MASK32 = 0xFFFFFFFF
PAGE = 4096

CF, PF, AF, ZF, SF, DF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x400, 0x800
STATUS_FLAGS = CF | PF | AF | ZF | SF | OF

_MASK = {1: 0xFF, 2: 0xFFFF, 4: MASK32, 8: MASK64, 16: (1 << 128) - 1}
_SIGN = {1: 0x80, 2: 0x8000, 4: 0x8000_0000, 8: 1 << 63}
_PARITY = tuple(0 if bin(i).count("1") & 1 else PF for i in range(256))


class Unsupported(Exception):
    """Instruction kmemgdb does not emulate (the caller falls back to single-stepping)."""


class Memory(Protocol):
    def read(self, vaddr: int, size: int) -> bytes: ...

    def write(self, vaddr: int, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class MemOp:
    address: int   # lowest address touched
    size: int      # bytes
    write: bool    # False = read


@dataclass(slots=True)
class Effect:
    regs: dict[str, int]          # every register after the instruction (a new dict)
    ops: list[MemOp]              # memory accesses in execution order
    copy: tuple[int, int, int] | None = None   # (dst, src, size) for movs / rep movs
    length: int = 0               # instruction length in bytes
    text: str = ""                # "mnemonic op_str" for messages


# --------------------------------------------------------------------------------------------
# ALU: pure functions on unsigned values already masked to SIZE bytes. Each returns
# (result, status flags); the caller merges the flags into rflags with merge_flags().

def parity(value: int) -> int:
    """PF for a result: set when the low 8 bits have an even number of ones."""
    return _PARITY[value & 0xFF]


def _zsp(r: int, size: int) -> int:
    f = _PARITY[r & 0xFF]
    if not r:
        f |= ZF
    if r & _SIGN[size]:
        f |= SF
    return f


def alu_add(a: int, b: int, size: int, carry: int = 0) -> tuple[int, int]:
    """a + b + carry (add, adc, xadd, inc)."""
    r = a + b + carry
    mask = _MASK[size]
    f = CF if r > mask else 0
    r &= mask
    f |= _zsp(r, size) | ((a ^ b ^ r) & AF)
    if (a ^ r) & (b ^ r) & _SIGN[size]:
        f |= OF
    return r, f


def alu_sub(a: int, b: int, size: int, borrow: int = 0) -> tuple[int, int]:
    """a - b - borrow (sub, sbb, cmp, neg, dec, cmpxchg, cmps, scas)."""
    r = a - b - borrow
    f = CF if r < 0 else 0
    r &= _MASK[size]
    f |= _zsp(r, size) | ((a ^ b ^ r) & AF)
    if (a ^ b) & (a ^ r) & _SIGN[size]:
        f |= OF
    return r, f


def alu_logic(r: int, size: int) -> tuple[int, int]:
    """Flags of and/or/xor/test: CF=OF=AF=0, ZF/SF/PF from the result."""
    r &= _MASK[size]
    return r, _zsp(r, size)


def alu_inc(a: int, size: int) -> tuple[int, int]:
    """a + 1; the returned flags never contain CF (inc leaves CF alone: merge with
    ``STATUS_FLAGS & ~CF``)."""
    r, f = alu_add(a, 1, size)
    return r, f & ~CF


def alu_dec(a: int, size: int) -> tuple[int, int]:
    """a - 1; CF is not part of the result (see alu_inc)."""
    r, f = alu_sub(a, 1, size)
    return r, f & ~CF


def alu_neg(a: int, size: int) -> tuple[int, int]:
    """0 - a: CF set when a != 0."""
    return alu_sub(0, a, size)


def merge_flags(rflags: int, flags: int, affected: int = STATUS_FLAGS) -> int:
    """rflags with the AFFECTED bits replaced by FLAGS; every other bit (IF, DF, ...) kept."""
    return (rflags & ~affected) | (flags & affected)


_CONDITIONS: dict[str, Callable[[int], bool]] = {
    "o": lambda f: bool(f & OF),
    "no": lambda f: not f & OF,
    "b": lambda f: bool(f & CF),
    "ae": lambda f: not f & CF,
    "e": lambda f: bool(f & ZF),
    "ne": lambda f: not f & ZF,
    "be": lambda f: bool(f & (CF | ZF)),
    "a": lambda f: not f & (CF | ZF),
    "s": lambda f: bool(f & SF),
    "ns": lambda f: not f & SF,
    "p": lambda f: bool(f & PF),
    "np": lambda f: not f & PF,
    "l": lambda f: bool(f & SF) != bool(f & OF),
    "ge": lambda f: bool(f & SF) == bool(f & OF),
    "le": lambda f: bool(f & ZF) or bool(f & SF) != bool(f & OF),
    "g": lambda f: not f & ZF and bool(f & SF) == bool(f & OF),
}
_CONDITIONS.update(c=_CONDITIONS["b"], nae=_CONDITIONS["b"], nb=_CONDITIONS["ae"],
                   nc=_CONDITIONS["ae"], z=_CONDITIONS["e"], nz=_CONDITIONS["ne"],
                   na=_CONDITIONS["be"], nbe=_CONDITIONS["a"], pe=_CONDITIONS["p"],
                   po=_CONDITIONS["np"], nge=_CONDITIONS["l"], nl=_CONDITIONS["ge"],
                   ng=_CONDITIONS["le"], nle=_CONDITIONS["g"])


def condition(cc: str, rflags: int) -> bool:
    """Whether condition code CC ("e", "ne", "l", "be", ...) holds for RFLAGS."""
    return _CONDITIONS[cc](rflags)


# --------------------------------------------------------------------------------------------
# Registers: capstone name -> (64-bit register, shift, mask, size in bytes)

_GPR: dict[str, tuple[str, int, int, int]] = {}
for _r in ("ax", "bx", "cx", "dx"):
    _GPR["r" + _r] = ("r" + _r, 0, MASK64, 8)
    _GPR["e" + _r] = ("r" + _r, 0, MASK32, 4)
    _GPR[_r] = ("r" + _r, 0, 0xFFFF, 2)
    _GPR[_r[0] + "l"] = ("r" + _r, 0, 0xFF, 1)
    _GPR[_r[0] + "h"] = ("r" + _r, 8, 0xFF, 1)
for _r in ("si", "di", "sp", "bp"):
    _GPR["r" + _r] = ("r" + _r, 0, MASK64, 8)
    _GPR["e" + _r] = ("r" + _r, 0, MASK32, 4)
    _GPR[_r] = ("r" + _r, 0, 0xFFFF, 2)
    _GPR[_r + "l"] = ("r" + _r, 0, 0xFF, 1)
for _n in range(8, 16):
    _GPR[f"r{_n}"] = (f"r{_n}", 0, MASK64, 8)
    _GPR[f"r{_n}d"] = (f"r{_n}", 0, MASK32, 4)
    _GPR[f"r{_n}w"] = (f"r{_n}", 0, 0xFFFF, 2)
    _GPR[f"r{_n}b"] = (f"r{_n}", 0, 0xFF, 1)
_ACCUMULATOR = {1: _GPR["al"], 2: _GPR["ax"], 4: _GPR["eax"], 8: _GPR["rax"]}

Reg = tuple[str, int, int, int]


def _get(regs: dict[str, int], reg: Reg) -> int:
    return (regs[reg[0]] >> reg[1]) & reg[2]


def _set(regs: dict[str, int], reg: Reg, value: int) -> None:
    """Write with x86-64 rules: 32-bit writes zero-extend, 8/16-bit writes keep the rest."""
    name, shift, mask, size = reg
    if size >= 4:
        regs[name] = value & mask
    else:
        regs[name] = (regs[name] & ~(mask << shift)) | ((value & mask) << shift)


def _load(mem: Memory, ops: list[MemOp], addr: int, size: int) -> int:
    value = int.from_bytes(mem.read(addr, size), "little")
    ops.append(MemOp(addr, size, False))
    return value


def _store(mem: Memory, ops: list[MemOp], addr: int, size: int, value: int) -> None:
    mem.write(addr, (value & _MASK[size]).to_bytes(size, "little"))
    ops.append(MemOp(addr, size, True))


# --------------------------------------------------------------------------------------------
# Compilation of one decoded instruction into a closure run(regs, mem, ops) -> copy | None.
# regs is the caller's new dict, rip already pointing at the next instruction.

Run = Callable[[dict, Memory, list], "tuple[int, int, int] | None"]
EA = Callable[[dict], int]

_LEGACY_PREFIXES = frozenset((0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67))
_STRING_OPCODES = {0xA4: "movs", 0xA5: "movs", 0xA6: "cmps", 0xA7: "cmps", 0xAA: "stos",
                   0xAB: "stos", 0xAC: "lods", 0xAD: "lods", 0xAE: "scas", 0xAF: "scas"}
_LOCKABLE = frozenset(("add", "adc", "and", "btc", "btr", "bts", "cmpxchg", "cmpxchg8b",
                       "cmpxchg16b", "dec", "inc", "neg", "not", "or", "sbb", "sub", "xor",
                       "xadd", "xchg"))
_NO_ACCESS = ("nop", "clflush", "clflushopt", "clwb", "prefetch", "prefetchnta", "prefetcht0",
              "prefetcht1", "prefetcht2", "prefetchw", "prefetchwt1")


class _Operand:
    __slots__ = ("kind", "size", "reg", "imm", "ea", "seg", "mem")

    def __init__(self, kind: str, size: int) -> None:
        self.kind, self.size = kind, size
        self.reg: Reg | None = None
        self.imm = 0
        self.ea: EA | None = None
        self.seg: str | None = None
        self.mem = None                   # capstone's x86 memory operand


def _make_ea(base: str | None, index: str | None, scale: int, disp: int, seg: str | None,
             amask: int) -> EA:
    """Effective (linear) address function for one memory operand."""
    if amask == MASK64 and seg is None and index is None:
        if base is None:
            const = disp & MASK64
            return lambda r: const
        return lambda r: (r[base] + disp) & MASK64

    def ea(r: dict) -> int:
        a = disp
        if base is not None:
            a += r[base]
        if index is not None:
            a += r[index] * scale
        a &= amask
        if seg is not None:
            a += r[seg]
        return a & MASK64
    return ea


def _operands(insn, text: str, amask: int) -> list[_Operand]:
    out = []
    for op in insn.operands:
        if op.type == X.X86_OP_REG:
            name = insn.reg_name(op.reg)
            reg = _GPR.get(name)
            if reg is None:
                raise Unsupported(f"{text}: register {name} is not emulated")
            o = _Operand("r", reg[3])
            o.reg = reg
        elif op.type == X.X86_OP_IMM:
            o = _Operand("i", op.size)
            o.imm = op.imm
        elif op.type == X.X86_OP_MEM:
            o = _Operand("m", op.size)
            m = op.mem
            base = insn.reg_name(m.base) if m.base else None
            index = insn.reg_name(m.index) if m.index else None
            if index in ("riz", "eiz"):
                index = None
            seg = insn.reg_name(m.segment) if m.segment else None
            seg = {"fs": "fs_base", "gs": "gs_base"}.get(seg or "")
            regs = []
            for name in (base, index):
                if name is None or name in ("rip", "eip"):
                    regs.append("rip" if name else None)
                    continue
                full = _GPR.get(name)
                if full is None:
                    raise Unsupported(f"{text}: address register {name} is not emulated")
                regs.append(full[0])
            o.ea = _make_ea(regs[0], regs[1], m.scale, m.disp, seg, amask)
            o.seg = seg
            o.mem = m
        else:
            raise Unsupported(f"{text}: operand type {op.type} is not emulated")
        out.append(o)
    return out


def _mem_and_other(ops: list[_Operand], text: str) -> tuple[_Operand, _Operand | None, int]:
    """The memory operand, the other operand (if any) and the memory operand's position."""
    for i, o in enumerate(ops):
        if o.kind == "m":
            others = [x for j, x in enumerate(ops) if j != i]
            return o, (others[0] if others else None), i
    raise Unsupported(f"{text}: no memory operand")


def _check_sizes(a: _Operand, b: _Operand, text: str) -> None:
    """Register and memory operands of one size (capstone gets a few prefix mixes wrong)."""
    if a.kind != "i" and b.kind != "i" and a.size != b.size:
        raise Unsupported(f"{text}: operand sizes {a.size} and {b.size} disagree")


def _value_getter(o: _Operand, size: int) -> Callable[[dict], int]:
    if o.kind == "i":
        const = o.imm & _MASK[size]
        return lambda r: const
    reg = o.reg
    name, shift, mask, _ = reg
    if shift == 0 and mask == MASK64:
        return lambda r: r[name]
    return lambda r: (r[name] >> shift) & mask


# ---- data movement ----

def _b_mov(insn, name, ops, text) -> Run:
    if len(ops) != 2:
        raise Unsupported(f"{text}: unexpected operands")
    dst, src = ops
    _check_sizes(dst, src, text)
    size = dst.size
    if dst.kind == "m" and src.kind in "ri":
        ea, get = dst.ea, _value_getter(src, size)

        def run(r, mem, mops):
            _store(mem, mops, ea(r), size, get(r))
    elif dst.kind == "r" and src.kind == "m":
        ea, reg = src.ea, dst.reg

        def run(r, mem, mops):
            _set(r, reg, _load(mem, mops, ea(r), size))
    else:
        raise Unsupported(f"{text}: no memory operand")
    return run


def _b_movx(insn, name, ops, text) -> Run:
    dst, src = ops
    if dst.kind != "r" or src.kind != "m":
        raise Unsupported(f"{text}: no memory operand")
    ea, reg, size = src.ea, dst.reg, src.size
    signed = name != "movzx"
    sign, ext = _SIGN.get(size, 0), ~_MASK[size]

    def run(r, mem, mops):
        v = _load(mem, mops, ea(r), size)
        if signed and v & sign:
            v |= ext
        _set(r, reg, v)
    return run


def _b_movbe(insn, name, ops, text) -> Run:
    dst, src = ops
    _check_sizes(dst, src, text)
    size = dst.size
    if dst.kind == "r" and src.kind == "m":
        ea, reg = src.ea, dst.reg

        def run(r, mem, mops):
            a = ea(r)
            v = int.from_bytes(mem.read(a, size), "big")
            mops.append(MemOp(a, size, False))
            _set(r, reg, v)
    elif dst.kind == "m" and src.kind == "r":
        ea, reg = dst.ea, src.reg

        def run(r, mem, mops):
            a = ea(r)
            mem.write(a, _get(r, reg).to_bytes(size, "big"))
            mops.append(MemOp(a, size, True))
    else:
        raise Unsupported(f"{text}: no memory operand")
    return run


def _b_lea(insn, name, ops, text) -> Run:
    dst, src = ops
    m = src.mem
    base = insn.reg_name(m.base) if m.base else None
    index = insn.reg_name(m.index) if m.index else None
    base = "rip" if base in ("rip", "eip") else _GPR[base][0] if base else None
    index = None if index in (None, "riz", "eiz") else _GPR[index][0]
    ea = _make_ea(base, index, m.scale, m.disp, None, _addr_mask(insn))   # lea ignores segments
    reg = dst.reg

    def run(r, mem, mops):
        _set(r, reg, ea(r))
    return run


def _b_noaccess(insn, name, ops, text) -> Run:
    _mem_and_other(ops, text)

    def run(r, mem, mops):
        return None
    return run


# ---- arithmetic and logic ----

def _op_add(a, b, size, fl):
    return alu_add(a, b, size)


def _op_adc(a, b, size, fl):
    return alu_add(a, b, size, fl & CF)


def _op_sub(a, b, size, fl):
    return alu_sub(a, b, size)


def _op_sbb(a, b, size, fl):
    return alu_sub(a, b, size, fl & CF)


def _op_and(a, b, size, fl):
    return alu_logic(a & b, size)


def _op_or(a, b, size, fl):
    return alu_logic(a | b, size)


def _op_xor(a, b, size, fl):
    return alu_logic(a ^ b, size)


_BINOPS = {"add": _op_add, "adc": _op_adc, "sub": _op_sub, "sbb": _op_sbb, "cmp": _op_sub,
           "and": _op_and, "or": _op_or, "xor": _op_xor, "test": _op_and}


def _b_alu(insn, name, ops, text) -> Run:
    if len(ops) != 2:
        raise Unsupported(f"{text}: unexpected operands")
    dst, src = ops
    _check_sizes(dst, src, text)
    size, fn, writes = dst.size, _BINOPS[name], name not in ("cmp", "test")
    if dst.kind == "m" and src.kind in "ri":
        ea, get = dst.ea, _value_getter(src, size)

        def run(r, mem, mops):
            a = ea(r)
            res, f = fn(_load(mem, mops, a, size), get(r), size, r["rflags"])
            r["rflags"] = (r["rflags"] & ~STATUS_FLAGS) | f
            if writes:
                _store(mem, mops, a, size, res)
    elif dst.kind == "r" and src.kind == "m":
        ea, reg = src.ea, dst.reg

        def run(r, mem, mops):
            res, f = fn(_get(r, reg), _load(mem, mops, ea(r), size), size, r["rflags"])
            r["rflags"] = (r["rflags"] & ~STATUS_FLAGS) | f
            if writes:
                _set(r, reg, res)
    else:
        raise Unsupported(f"{text}: no memory operand")
    return run


def _b_unary(insn, name, ops, text) -> Run:
    dst, _, _ = _mem_and_other(ops, text)
    ea, size = dst.ea, dst.size
    if name == "not":
        mask = _MASK[size]

        def run(r, mem, mops):
            a = ea(r)
            _store(mem, mops, a, size, _load(mem, mops, a, size) ^ mask)
        return run
    fn = {"inc": alu_inc, "dec": alu_dec, "neg": alu_neg}[name]
    affected = STATUS_FLAGS if name == "neg" else STATUS_FLAGS & ~CF

    def run(r, mem, mops):
        a = ea(r)
        res, f = fn(_load(mem, mops, a, size), size)
        r["rflags"] = (r["rflags"] & ~affected) | f
        _store(mem, mops, a, size, res)
    return run


# ---- atomics ----

def _b_xchg(insn, name, ops, text) -> Run:
    m, other, _ = _mem_and_other(ops, text)
    if other is None or other.kind != "r":
        raise Unsupported(f"{text}: unexpected operands")
    _check_sizes(m, other, text)
    ea, reg, size = m.ea, other.reg, m.size

    def run(r, mem, mops):
        a = ea(r)
        old = _load(mem, mops, a, size)
        _store(mem, mops, a, size, _get(r, reg))
        _set(r, reg, old)
    return run


def _mem_dest_reg(ops, text):
    """(address function, register, size) of `op [mem], reg` (xadd, cmpxchg)."""
    dst, src = ops
    _check_sizes(dst, src, text)
    if dst.kind != "m" or src.kind != "r":
        raise Unsupported(f"{text}: no memory destination")
    return dst.ea, src.reg, dst.size


def _b_xadd(insn, name, ops, text) -> Run:
    ea, reg, size = _mem_dest_reg(ops, text)

    def run(r, mem, mops):
        a = ea(r)
        old = _load(mem, mops, a, size)
        res, f = alu_add(old, _get(r, reg), size)
        r["rflags"] = (r["rflags"] & ~STATUS_FLAGS) | f
        _store(mem, mops, a, size, res)
        _set(r, reg, old)
    return run


def _b_cmpxchg(insn, name, ops, text) -> Run:
    ea, reg, size = _mem_dest_reg(ops, text)
    acc = _ACCUMULATOR[size]

    def run(r, mem, mops):
        a = ea(r)
        old = _load(mem, mops, a, size)
        expected = _get(r, acc)
        _, f = alu_sub(expected, old, size)
        r["rflags"] = (r["rflags"] & ~STATUS_FLAGS) | f
        if expected == old:                    # the accumulator is not written (upper
            _store(mem, mops, a, size, _get(r, reg))   # half of rax kept for 32-bit)
        else:                                  # hardware writes the old value back
            _store(mem, mops, a, size, old)
            _set(r, acc, old)
    return run


def _b_cmpxchgnb(insn, name, ops, text) -> Run:
    m, _, _ = _mem_and_other(ops, text)
    ea = m.ea
    half = 8 if name == "cmpxchg16b" else 4
    size, lo_mask, shift = 2 * half, _MASK[half], 8 * half
    rax, rdx, rbx, rcx = (_ACCUMULATOR[half], _GPR["rdx" if half == 8 else "edx"],
                          _GPR["rbx" if half == 8 else "ebx"], _GPR["rcx" if half == 8 else "ecx"])

    def run(r, mem, mops):
        a = ea(r)
        if half == 8 and a & 15:
            raise Unsupported(f"{text}: operand at {a:#x} is not 16-byte aligned (#GP)")
        old = _load(mem, mops, a, size)
        if old == (_get(r, rdx) << shift) | _get(r, rax):
            _store(mem, mops, a, size, (_get(r, rcx) << shift) | _get(r, rbx))
            r["rflags"] |= ZF
        else:
            _store(mem, mops, a, size, old)
            _set(r, rax, old & lo_mask)
            _set(r, rdx, old >> shift)
            r["rflags"] &= ~ZF
    return run


# ---- bit tests ----

def _b_bt(insn, name, ops, text) -> Run:
    dst, src = ops
    _check_sizes(dst, src, text)
    if dst.kind != "m":
        raise Unsupported(f"{text}: no memory operand")
    size = dst.size
    bits = size * 8
    log2 = bits.bit_length() - 1
    ea = dst.ea
    update = {"bt": None, "bts": "s", "btr": "r", "btc": "c"}[name]

    if src.kind == "i":
        bit = src.imm & (bits - 1)

        def locate(r):
            return ea(r), bit
    else:
        reg = src.reg
        sign, full = _SIGN[size], 1 << bits

        def locate(r):
            off = _get(r, reg)
            if off & sign:
                off -= full
            return (ea(r) + (off >> log2) * size) & MASK64, off & (bits - 1)

    def run(r, mem, mops):
        a, bit = locate(r)
        v = _load(mem, mops, a, size)
        r["rflags"] = (r["rflags"] & ~CF) | ((v >> bit) & 1)
        if update is not None:
            if update == "s":
                v |= 1 << bit
            elif update == "r":
                v &= ~(1 << bit)
            else:
                v ^= 1 << bit
            _store(mem, mops, a, size, v)
    return run


# ---- conditional ----

def _b_cmov(insn, name, ops, text) -> Run:
    dst, src = ops
    _check_sizes(dst, src, text)
    if dst.kind != "r" or src.kind != "m":
        raise Unsupported(f"{text}: no memory operand")
    cond, ea, reg, size = _CONDITIONS[name[4:]], src.ea, dst.reg, src.size

    def run(r, mem, mops):
        v = _load(mem, mops, ea(r), size)      # read whatever the condition
        if cond(r["rflags"]):
            _set(r, reg, v)
        elif size == 4:                         # a 32-bit cmov always zero-extends
            r[reg[0]] &= MASK32
    return run


def _b_set(insn, name, ops, text) -> Run:
    m, _, _ = _mem_and_other(ops, text)
    cond, ea = _CONDITIONS[name[3:]], m.ea

    def run(r, mem, mops):
        _store(mem, mops, ea(r), 1, 1 if cond(r["rflags"]) else 0)
    return run


# ---- stack and control transfer ----

def _stack_operand(insn, ops, text):
    """push/pop [mem]: the memory operand's address function and the size moved (2 with a 0x66
    prefix, else 8; REX.W wins)."""
    m, _, _ = _mem_and_other(ops, text)
    return m.ea, 2 if insn.prefix[2] == 0x66 and not insn.rex & 8 else 8


def _b_push(insn, name, ops, text) -> Run:
    ea, size = _stack_operand(insn, ops, text)

    def run(r, mem, mops):
        v = _load(mem, mops, ea(r), size)      # address computed before rsp changes
        sp = (r["rsp"] - size) & MASK64
        _store(mem, mops, sp, size, v)
        r["rsp"] = sp
    return run


def _b_pop(insn, name, ops, text) -> Run:
    ea, size = _stack_operand(insn, ops, text)

    def run(r, mem, mops):
        sp = r["rsp"]
        v = _load(mem, mops, sp, size)
        r["rsp"] = (sp + size) & MASK64           # address computed after rsp moves
        _store(mem, mops, ea(r), size, v)
    return run


def _b_branch(insn, name, ops, text) -> Run:
    m, other, _ = _mem_and_other(ops, text)
    if insn.opcode[0] != 0xFF or (insn.modrm >> 3) & 7 not in (2, 4):
        raise Unsupported(f"{text}: far transfers are not emulated")   # ff /3, ff /5
    if insn.prefix[2] == 0x66:                   # 16-bit near target: AMD and Intel differ
        raise Unsupported(f"{text}: operand-size prefix on an indirect branch")
    if m.size != 8:
        raise Unsupported(f"{text}: only 64-bit near indirect targets are emulated")
    ea, call = m.ea, name == "call"

    def run(r, mem, mops):
        target = _load(mem, mops, ea(r), 8)
        if call:
            sp = (r["rsp"] - 8) & MASK64
            _store(mem, mops, sp, 8, r["rip"])
            r["rsp"] = sp
        r["rip"] = target
    return run


# ---- string instructions ----

_REP_LIMIT = 64 << 20      # bytes per rep string instruction emulated in one call


def _chunk(p: int, size: int, backward: bool, limit: int) -> int:
    """How many elements from P on stay in P's page (at least 1, at most LIMIT)."""
    avail = (p & (PAGE - 1)) + size if backward else PAGE - (p & (PAGE - 1))
    return max(1, min(limit, avail // size))


def _overlapping_copy(data: bytes, src: int, dst: int, size: int, backward: bool) -> bytes:
    """What an element-by-element copy of DATA (at SRC) to DST writes when the destination
    overlaps the part of the source still to be read (forward with src < dst < src+len,
    backward with dst < src < dst+len): later elements read what earlier ones wrote."""
    total = len(data)
    if not backward:
        d = dst - src
        buf = bytearray(d + total)
        buf[:total] = data
        step = max(1, d // size) * size      # chunks that never read their own writes
        for i in range(0, total, step):
            e = min(i + step, total)
            buf[d + i:d + e] = buf[i:e]
        return bytes(buf[d:d + total])
    d = src - dst
    buf = bytearray(d + total)
    buf[d:] = data
    step = max(1, d // size) * size
    for end in range(total, 0, -step):
        start = max(0, end - step)
        buf[start:end] = buf[start + d:end + d]
    return bytes(buf[:total])


def _b_string(insn, kind: str, ops, text: str, rep: int, amask: int) -> Run:
    """rep: 0 none, 0xF3 rep/repe, 0xF2 repne (movs/stos/lods treat both as rep)."""
    size = next(o.size for o in ops if o.kind == "m")
    seg = next((o.seg for o in ops if o.kind == "m" and o.mem.base
                and insn.reg_name(o.mem.base) in ("rsi", "esi")), None)
    acc = _ACCUMULATOR[size]
    mask = _MASK[size]
    wrap32 = amask != MASK64

    def span(p: int, n: int, back: bool) -> int:
        low = p - (n - 1) * size if back else p
        if wrap32 and (low < 0 or low + n * size > 1 << 32):
            raise Unsupported(f"{text}: 32-bit address wraps around")
        return low & MASK64

    def finish(r, n, back, si, di):
        delta = -n * size if back else n * size
        if si:
            r["rsi"] = (r["rsi"] + delta) & amask
        if di:
            r["rdi"] = (r["rdi"] + delta) & amask
        if rep:
            r["rcx"] = (r["rcx"] - n) & amask

    def iterations(r) -> int:
        return r["rcx"] & amask if rep else 1

    if kind in ("movs", "stos", "lods"):
        def run(r, mem, mops):
            n = iterations(r)
            if not n:
                return None
            back = bool(r["rflags"] & DF)
            total = n * size
            if total > _REP_LIMIT:
                raise Unsupported(f"{text}: {total} bytes is too much to emulate in one go")
            copy = None
            if kind == "stos":
                dst = span(r["rdi"] & amask, n, back)
                mem.write(dst, (_get(r, acc) & mask).to_bytes(size, "little") * n)
                mops.append(MemOp(dst, total, True))
            else:
                low = span(r["rsi"] & amask, n, back)
                src = (low + r[seg]) & MASK64 if seg else low
                data = mem.read(src, total)
                mops.append(MemOp(src, total, False))
                if kind == "lods":
                    last = data[:size] if back else data[-size:]
                    _set(r, acc, int.from_bytes(last, "little"))
                else:
                    dst = span(r["rdi"] & amask, n, back)
                    if n > 1 and (0 < src - dst < total if back else 0 < dst - src < total):
                        data = _overlapping_copy(data, src, dst, size, back)
                    mem.write(dst, data)
                    mops.append(MemOp(dst, total, True))
                    copy = (dst, src, total)
            finish(r, n, back, kind != "stos", kind != "lods")
            return copy
        return run

    cmps = kind == "cmps"
    stop_equal = rep == 0xF2                      # repne stops on equal, repe on not equal

    def run(r, mem, mops):
        n = iterations(r)
        if not n:
            return None
        back = bool(r["rflags"] & DF)
        si, di = r["rsi"] & amask, r["rdi"] & amask
        sbase = r[seg] if seg else 0
        accv = _get(r, acc)
        done, f = 0, 0
        step = -size if back else size
        while done < n:
            if done * size > _REP_LIMIT:       # only reads so far: nothing to undo
                raise Unsupported(f"{text}: more than {_REP_LIMIT} bytes to compare")
            psi, pdi = si + done * step, di + done * step
            k = _chunk(pdi, size, back, n - done)
            if cmps:
                k = _chunk(psi + sbase, size, back, k)
                lo = span(psi, k, back)
                a_block = mem.read((lo + sbase) & MASK64, k * size)
            lo = span(pdi, k, back)
            b_block = mem.read(lo, k * size)
            stopped = False
            for j in range(k):
                off = (k - 1 - j) * size if back else j * size
                b = int.from_bytes(b_block[off:off + size], "little")
                a = int.from_bytes(a_block[off:off + size], "little") if cmps else accv
                _, f = alu_sub(a, b, size)
                done += 1
                if rep and (a == b) == stop_equal:
                    stopped = True
                    break
            if stopped:
                break
        r["rflags"] = (r["rflags"] & ~STATUS_FLAGS) | f
        if cmps:
            lo = span(si, done, back)
            mops.append(MemOp((lo + sbase) & MASK64, done * size, False))
        mops.append(MemOp(span(di, done, back), done * size, False))
        finish(r, done, back, cmps, True)
        return None
    return run


# --------------------------------------------------------------------------------------------

_BUILDERS = {
    "mov": _b_mov, "movabs": _b_mov, "movzx": _b_movx, "movsx": _b_movx, "movsxd": _b_movx,
    "movbe": _b_movbe, "lea": _b_lea,
    "xchg": _b_xchg, "xadd": _b_xadd, "cmpxchg": _b_cmpxchg,
    "cmpxchg8b": _b_cmpxchgnb, "cmpxchg16b": _b_cmpxchgnb,
    "inc": _b_unary, "dec": _b_unary, "neg": _b_unary, "not": _b_unary,
    "bt": _b_bt, "bts": _b_bt, "btr": _b_bt, "btc": _b_bt,
    "push": _b_push, "pop": _b_pop, "call": _b_branch, "jmp": _b_branch,
}
_BUILDERS.update(dict.fromkeys(_BINOPS, _b_alu))
_BUILDERS.update(dict.fromkeys(_NO_ACCESS, _b_noaccess))
_BUILDERS.update({"cmov" + cc: _b_cmov for cc in _CONDITIONS})
_BUILDERS.update({"set" + cc: _b_set for cc in _CONDITIONS})


def _addr_mask(insn) -> int:
    return MASK32 if insn.addr_size == 4 else MASK64


def _prefixes(code: bytes, length: int) -> tuple[int, bool, str | None]:
    """From the bytes themselves (capstone drops some prefixes, f2 before movs for one):
    the last f2/f3 prefix or 0, whether there is a lock prefix, and the string operation
    when the instruction is a one-byte string opcode (movs, cmps, stos, lods, scas)."""
    rep, lock, i = 0, False, 0
    while i < length and code[i] in _LEGACY_PREFIXES:
        if code[i] in (0xF2, 0xF3):
            rep = code[i]
        lock |= code[i] == 0xF0
        i += 1
    if i < length and 0x40 <= code[i] <= 0x4F:
        i += 1                                   # REX
    kind = _STRING_OPCODES.get(code[i]) if i == length - 1 else None
    return rep, lock, kind


def _build(insn, rep: int, lock: bool, kind: str | None, text: str) -> Run:
    amask = _addr_mask(insn)
    if kind is not None:
        return _b_string(insn, kind, _operands(insn, text, amask), text, rep, amask)
    name = _cs.insn_name(insn.id)
    builder = _BUILDERS.get(name)
    if builder is None:
        raise Unsupported(f"{text}: instruction not emulated")
    if rep:
        raise Unsupported(f"{text}: rep prefix on a non-string instruction")
    ops = _operands(insn, text, amask)
    if not any(o.kind == "m" for o in ops):
        raise Unsupported(f"{text}: no memory operand")
    if lock and (name not in _LOCKABLE or ops[0].kind != "m"):
        raise Unsupported(f"{text}: lock prefix here raises #UD")
    if insn.opcode[0] in (0xF6, 0xF7) and (insn.modrm >> 3) & 7 == 1:
        raise Unsupported(f"{text}: undocumented encoding (f6/f7 /1)")
    return builder(insn, name, ops, text)


class _Plan:
    __slots__ = ("length", "text", "run", "error", "mnemonic", "rep", "string")

    def __init__(self, length: int, text: str, run: Run | None, error: str | None,
                 mnemonic: str = "", rep: int = 0, string: str | None = None) -> None:
        self.length, self.text, self.run, self.error = length, text, run, error
        self.mnemonic, self.rep, self.string = mnemonic, rep, string


@dataclass(frozen=True, slots=True)
class Facts:
    """What an instruction is, for callers that check its result (verify mode)."""
    length: int
    text: str
    mnemonic: str          # capstone's name: "mov", "bts", "movsb", ...
    rep: int               # 0, 0xF3 (rep/repe) or 0xF2 (repne) on a string instruction
    string: str | None     # movs | stos | lods | cmps | scas, or None


_cs = Cs(CS_ARCH_X86, CS_MODE_64)
_cs.detail = True
_cache: dict[bytes, _Plan] = {}
_CACHE_LIMIT = 4096


def _compile(code: bytes) -> _Plan:
    try:
        insn = next(_cs.disasm(code, 0, 1), None)
    except CsError:
        insn = None
    if insn is None:
        return _Plan(0, code[:15].hex(), None, f"cannot decode instruction bytes {code[:15].hex()}")
    text = f"{insn.mnemonic} {insn.op_str}".strip()
    rep, lock, kind = _prefixes(code, insn.size)
    if kind is not None and rep and not insn.mnemonic.startswith("rep"):
        text = "rep " + text                     # capstone hides f2 on movs/stos/lods
    name = _cs.insn_name(insn.id)
    try:
        run = _build(insn, rep, lock, kind, text)
    except Unsupported as exc:
        return _Plan(insn.size, text, None, str(exc), name, rep, kind)
    return _Plan(insn.size, text, run, None, name, rep if kind else 0, kind)


def _plan(code: bytes) -> _Plan:
    if type(code) is not bytes:
        code = bytes(code)
    plan = _cache.get(code)
    if plan is None:
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        plan = _cache[code] = _compile(code)
    return plan


def facts(code: bytes) -> Facts:
    """Length, text and kind of the instruction at the start of CODE (from the same cache as
    emulate())."""
    plan = _plan(code)
    return Facts(plan.length, plan.text, plan.mnemonic, plan.rep, plan.string)


def emulate(code: bytes, regs: dict[str, int], mem: Memory) -> Effect:
    """Perform the instruction at the start of CODE with REGS on MEM, as an x86-64 CPU in
    64-bit kernel mode would. Raises Unsupported (before touching memory or registers, except
    for run-time conditions such as a misaligned cmpxchg16b) when it cannot."""
    plan = _plan(code)
    if plan.error is not None:
        raise Unsupported(plan.error)
    new = dict(regs)
    new["rip"] = (regs["rip"] + plan.length) & MASK64
    ops: list[MemOp] = []
    copy = plan.run(new, mem, ops)
    return Effect(new, ops, copy, plan.length, plan.text)
