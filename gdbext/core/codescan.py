"""Searches over kernel machine code (bytes plus their load address), vectorized with numpy."""
from __future__ import annotations

import numpy as np

CALL_REL32 = 0xE8
CALL_LENGTH = 5
# `mov eax, 1; ret`: jumping here from a function's first instruction makes it return 1.
RETURN_ONE = bytes.fromhex("b801000000c3")


def call_sites(code: bytes, base: int, target: int) -> list[int]:
    """Addresses of `call rel32` instructions in CODE (loaded at BASE) that call TARGET.
    A byte pattern search: callers check the hits with a disassembler when it matters."""
    buf = np.frombuffer(code, np.uint8)
    if len(buf) < 5:
        return []
    pos = np.nonzero(buf[:-4] == CALL_REL32)[0]
    rel = (buf[pos + 1].astype(np.int64) | buf[pos + 2].astype(np.int64) << 8
           | buf[pos + 3].astype(np.int64) << 16 | buf[pos + 4].astype(np.int64) << 24)
    rel = np.where(rel >= 1 << 31, rel - (1 << 32), rel)
    wanted = np.int64(target - base - 5)
    return [base + int(p) for p in pos[(pos.astype(np.int64) + rel) == wanted]]


def call_target(code: bytes, site: int) -> int | None:
    """Where the `call rel32` at SITE (CODE: its bytes, at least 5) goes; None if it is not one."""
    if len(code) < CALL_LENGTH or code[0] != CALL_REL32:
        return None
    rel = int.from_bytes(code[1:5], "little", signed=True)
    return (site + CALL_LENGTH + rel) & ((1 << 64) - 1)


def find_bytes(code: bytes, base: int, pattern: bytes) -> int | None:
    index = code.find(pattern)
    return None if index < 0 else base + index
