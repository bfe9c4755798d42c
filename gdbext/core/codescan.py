"""Searches over kernel machine code (bytes plus their load address), vectorized with numpy."""
from __future__ import annotations

import numpy as np

CALL_REL32 = 0xE8
JMP_REL32 = 0xE9          # a tail call: `return helper(...)` compiles to a jump
CALL_LENGTH = 5
# `mov eax, 1; ret`: jumping here from a function's first instruction makes it return 1.
RETURN_ONE = bytes.fromhex("b801000000c3")


def calls_to(code: bytes, base: int, targets, opcodes=(CALL_REL32,)) -> list[tuple[int, int]]:
    """(address, target) of the `call rel32` instructions (OPCODES: also `jmp rel32`, tail
    calls) in CODE (loaded at BASE) that go to one of TARGETS. A byte pattern search: callers
    check the hits with a disassembler or the bytes at a stop when it matters."""
    buf = np.frombuffer(code, np.uint8)
    if len(buf) < CALL_LENGTH:
        return []
    pos = np.nonzero(np.isin(buf[:-4], opcodes))[0]
    rel = (buf[pos + 1].astype(np.int64) | buf[pos + 2].astype(np.int64) << 8
           | buf[pos + 3].astype(np.int64) << 16 | buf[pos + 4].astype(np.int64) << 24)
    rel = np.where(rel >= 1 << 31, rel - (1 << 32), rel)
    dest = pos.astype(np.int64) + rel + CALL_LENGTH          # relative to BASE
    wanted = np.array([t - base for t in targets], np.int64)
    hit = np.isin(dest, wanted)
    return [(base + int(p), base + int(d)) for p, d in zip(pos[hit], dest[hit])]


def call_sites(code: bytes, base: int, target: int) -> list[int]:
    """Addresses of `call rel32` instructions in CODE (loaded at BASE) that call TARGET."""
    return [site for site, _ in calls_to(code, base, [target])]


def elf_calls_to(path, targets, opcodes=(CALL_REL32,)) -> list[tuple[int, int]]:
    """calls_to() over every executable section of the ELF file at PATH (vmlinux), at the
    addresses it links them to."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.constants import SH_FLAGS

    out = []
    with open(path, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            if sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and sec["sh_type"] == "SHT_PROGBITS":
                out += calls_to(sec.data(), sec["sh_addr"], targets, opcodes)
    return out


def call_target(code: bytes, site: int, opcodes=(CALL_REL32,)) -> int | None:
    """Where the `call rel32` (or other OPCODES) at SITE (CODE: its bytes, at least 5) goes;
    None if it is not one."""
    if len(code) < CALL_LENGTH or code[0] not in opcodes:
        return None
    rel = int.from_bytes(code[1:5], "little", signed=True)
    return (site + CALL_LENGTH + rel) & ((1 << 64) - 1)


def find_bytes(code: bytes, base: int, pattern: bytes) -> int | None:
    index = code.find(pattern)
    return None if index < 0 else base + index
