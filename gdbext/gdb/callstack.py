"""The call stack at a hook: a validated return-address scan of the stopped vCPU's stack."""
from __future__ import annotations

from ..core import paging
from ..core.heap.context import PAGE_SIZE
from ..core.memory import MemoryError_
from ..core.stackscan import backtrace
from .session import SESSION

STACK_SNAPSHOT = 4096                # bytes above rsp searched for return addresses


def read_stack(memory, rsp: int, limit: int) -> bytes:
    """Up to LIMIT bytes at RSP, ending early at an unmapped page (a stack's top guard)."""
    out = b""
    while len(out) < limit:
        addr = rsp + len(out)
        n = min(limit - len(out), PAGE_SIZE - (addr & (PAGE_SIZE - 1)))
        try:
            out += memory.read(addr, n)
        except (paging.PagingError, MemoryError_):
            break
    return out


def stack_backtrace(first: int, rsp: int, memory=None) -> list[int]:
    """Return addresses, innermost first, from FIRST (the return address of the call being
    made) up the stack at RSP. MEMORY reads the stack (default: the session's virtual memory;
    kmemcheck passes one that sees the pages it hid)."""
    symbolizer, vmem = SESSION.symbolizer(), SESSION.vmem()

    def function_of(addr: int) -> tuple[int, int] | None:
        if addr >> 47 != 0x1FFFF:
            return None
        located = symbolizer.lookup(addr)
        if located is None or not located.symbol.size:
            return None
        return located.symbol.addr, located.symbol.addr + located.symbol.size

    def read_code(addr: int, n: int) -> bytes | None:
        try:
            return vmem.read(addr, n)
        except Exception:
            return None

    def is_thunk(addr: int) -> bool:
        located = symbolizer.lookup(addr)
        return bool(located and located.symbol.name.startswith("__x86_indirect_thunk"))

    stack = read_stack(memory or vmem, rsp, STACK_SNAPSHOT)
    return backtrace(first, stack, function_of, read_code, is_thunk)
