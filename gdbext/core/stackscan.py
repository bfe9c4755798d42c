"""A backtrace from a snapshot of the stack, without an unwinder (the kernel's ORC tables are
not read here): return addresses found by scanning the stack, each checked against the call
before it.

Frame N+1 is the first word above frame N's that points just past a call instruction whose
target is the function holding frame N (or an indirect call, whose target cannot be checked).
That rejects most stale words a plain scan would show (the kernel prints those with `?`). When
no word passes (a tail call removed a frame), the first word after any call is taken instead.
"""
from __future__ import annotations

import struct
from typing import Callable

from .codescan import call_target

MAX_FRAMES = 16
# Lengths of `call` encodings: e8 rel32 (5), ff /2 with each addressing form (2, 3, 6, 7; 4
# and 8 with a SIB byte or a REX prefix).
INDIRECT_LENGTHS = (2, 3, 4, 6, 7, 8)


def _indirect_call_before(code: bytes, length: int) -> bool:
    """CODE ends where a return address points; is there an `ff /2` of LENGTH bytes before?"""
    insn = code[len(code) - length:]
    if insn[0] in (0x41, 0x42, 0x43) and length > 2:        # REX.B/X prefixes
        insn = insn[1:]
    return len(insn) >= 2 and insn[0] == 0xFF and (insn[1] >> 3) & 7 == 2


def call_before(code: bytes, ret: int) -> tuple[bool, int | None]:
    """(is there a call ending at RET, its direct target or None) for CODE = the 8 bytes
    before RET."""
    target = call_target(code[-5:], ret - 5)
    if target is not None:
        return True, target
    return any(_indirect_call_before(code, n) for n in INDIRECT_LENGTHS), None


def backtrace(first: int, stack: bytes, function_of: Callable[[int], tuple[int, int] | None],
              read_code: Callable[[int, int], bytes | None],
              is_thunk: Callable[[int], bool] = lambda addr: False) -> list[int]:
    """Return addresses, innermost first, starting with FIRST (a return address in the
    function the snapshot STACK was taken in, from its stack pointer up). FUNCTION_OF(addr)
    gives [start, end) of the function holding a code address (None outside code);
    READ_CODE(addr, n) the bytes there (None when unreadable); IS_THUNK(addr) says whether a
    call target is an indirect-call thunk (a retpoline)."""
    frames = [first]
    words = [w for (w,) in struct.iter_unpack("<Q", stack[:len(stack) // 8 * 8])]
    pos = 0
    while len(frames) < MAX_FRAMES:
        holder = function_of(frames[-1] - 1)
        found = _next_frame(words, pos, holder, function_of, read_code, is_thunk, strict=True)
        if found is None:
            found = _next_frame(words, pos, holder, function_of, read_code, is_thunk, strict=False)
        if found is None:
            break
        pos, ret = found
        frames.append(ret)
        pos += 1
    return frames


def _next_frame(words, pos, holder, function_of, read_code, is_thunk, strict):
    for i in range(pos, len(words)):
        ret = words[i]
        if function_of(ret) is None:
            continue
        code = read_code(ret - 8, 8)
        if code is None:
            continue
        is_call, target = call_before(code, ret)
        if not is_call:
            continue
        if not strict or target is None or is_thunk(target) or (
                holder is not None and target == holder[0]):
            return i, ret
    return None
