"""Verify mode: the host's completion of an instruction, checked against the guest's own.

With `set kmemcheck verify on`, an instruction the host completed is also run by the guest
(its pages shown, one single-step trap after it), and what the guest produced is compared with
what the host computed: every general register, rip, the flags the instruction defines, and
every byte it wrote. The guest keeps its own result; a difference is an internal error of the
emulator, reported with the instruction's bytes and the differing state.

A rep string instruction traps after each iteration when single-stepped, so the guest runs one
iteration: it is compared with the host's first iteration, and the host's result for the
whole instruction is applied after it (it was computed from the state before the first).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import emulate
from .emulate import AF, DF, OF, PF, SF, STATUS_FLAGS, ZF

GENERAL = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
           "r12", "r13", "r14", "r15", "rip")
# Flags the architecture leaves undefined (Intel SDM vol. 2): CPUs, and QEMU, set them as they
# like, so they are not compared.
UNDEFINED_FLAGS = {"bt": OF | SF | AF | PF | ZF, "bts": OF | SF | AF | PF | ZF,
                   "btr": OF | SF | AF | PF | ZF, "btc": OF | SF | AF | PF | ZF,
                   "and": AF, "or": AF, "xor": AF, "test": AF}
MASK64 = (1 << 64) - 1


@dataclass
class NativeCheck:
    """What one guest single-step of the instruction must produce."""
    code: bytes
    text: str
    regs: dict[str, int]               # registers after the step
    writes: list[tuple[int, bytes]]    # memory after the step
    flags: int                         # rflags bits compared
    partial: bool                      # a rep instruction the step leaves unfinished

    def differences(self, native: dict[str, int], read) -> list[str]:
        """Each way NATIVE (registers after the guest's step) and memory (READ(addr, n)) differ
        from the expectation, as `name host=... guest=...`."""
        out = []
        for name in GENERAL:
            want, got = self.regs[name] & MASK64, native[name] & MASK64
            if want != got:
                out.append(f"{name} host={want:#x} guest={got:#x}")
        want, got = self.regs["rflags"] & self.flags, native["rflags"] & self.flags
        if want != got:
            out.append(f"rflags host={self.regs['rflags']:#x} guest={native['rflags']:#x} "
                       f"(compared bits {self.flags:#x})")
        for addr, data in self.writes:
            try:
                now = read(addr, len(data))
            except Exception as exc:          # the guest's memory is what is being checked
                out.append(f"memory at {addr:#x}: unreadable ({exc})")
                continue
            if now != data:
                out.append(f"memory at {addr:#x} host={data.hex()} guest={bytes(now).hex()}")
        return out

    def describe(self, differences: list[str]) -> str:
        return (f"verify: `{self.text}` (bytes {self.code[:15].hex()}) differs between host and "
                f"guest: " + "; ".join(differences))


def native_check(code: bytes, regs: dict[str, int], host_regs: dict[str, int],
                 host_writes: list[tuple[int, bytes]], memory) -> NativeCheck:
    """The expectation for one guest step of the instruction at REGS' rip, given the host's
    result (HOST_REGS, HOST_WRITES) and the memory before it (MEMORY, which stages writes)."""
    facts = emulate.facts(code)
    flags = (STATUS_FLAGS | DF) & ~UNDEFINED_FLAGS.get(facts.mnemonic, 0)
    count = regs["rcx"]
    if not facts.rep or count <= 1:
        return NativeCheck(code, facts.text, host_regs, host_writes, flags, False)
    # One iteration: the host's emulation with a count of one, then what the CPU leaves for
    # the next iteration (rcx one less; rip still on the instruction unless repe/repne ended).
    staged = _Staged(memory)
    one = emulate.emulate(code, dict(regs, rcx=1), staged).regs
    one["rcx"] = (count - 1) & MASK64
    if not _stopped_early(facts, one["rflags"]):
        one["rip"] = regs["rip"]
    return NativeCheck(code, facts.text, one, staged.writes, flags, True)


def _stopped_early(facts: emulate.Facts, rflags: int) -> bool:
    """A repe/repne cmps or scas ends when its condition fails."""
    if facts.string not in ("cmps", "scas"):
        return False
    zero = bool(rflags & ZF)
    return zero if facts.rep == 0xF2 else not zero


class _Staged:
    def __init__(self, memory):
        self.memory = memory
        self.writes: list[tuple[int, bytes]] = []

    def read(self, addr: int, size: int) -> bytes:
        return self.memory.read(addr, size)

    def write(self, addr: int, data: bytes) -> None:
        self.writes.append((addr, bytes(data)))

