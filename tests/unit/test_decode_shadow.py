"""kmemcheck's pure parts: instruction decoding into memory accesses, and the shadow map."""
import pytest

from gdbext.core.decode import DecodeError, decode
from gdbext.core.shadow import FREED, INITIALIZED, UNALLOCATED, UNINITIALIZED, Shadow

REGS = {r: 0 for r in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9",
                       "r10", "r11", "r12", "r13", "r14", "r15")}
REGS.update(rdi=0xFFFF888000100000, rsi=0xFFFF888000200000, rcx=3, rbx=0x10,
            gs_base=0xFFFF88800F600000, fs_base=0)
RIP = 0xFFFFFFFF81000000


def accesses(code: bytes, **regs):
    insn = decode(code, RIP, {**REGS, **regs})
    return insn, [(a.address, a.size, a.kind) for a in insn.accesses]


@pytest.mark.parametrize("code, expected", [
    (b"\x48\x8b\x47\x08", [(0xFFFF888000100008, 8, "read")]),            # mov rax, [rdi+8]
    (b"\x8b\x47\x08", [(0xFFFF888000100008, 4, "read")]),                # mov eax, [rdi+8]
    (b"\x0f\xb6\x47\x03", [(0xFFFF888000100003, 1, "read")]),            # movzx eax, byte [rdi+3]
    (b"\x48\x0f\xbf\x47\x02", [(0xFFFF888000100002, 2, "read")]),        # movsx rax, word [rdi+2]
    (b"\x66\x89\x47\x10", [(0xFFFF888000100010, 2, "write")]),           # mov [rdi+0x10], ax
    (b"\x66\x8b\x47\x10", [(0xFFFF888000100010, 2, "read")]),            # mov ax, [rdi+0x10]
    (b"\x48\x89\x04\x5f", [(0xFFFF888000100020, 8, "write")]),           # mov [rdi+rbx*2], rax
    (b"\x83\x7f\x04\x00", [(0xFFFF888000100004, 4, "read")]),            # cmp dword [rdi+4], 0
    (b"\xf6\x47\x01\x80", [(0xFFFF888000100001, 1, "read")]),            # test byte [rdi+1], 0x80
    (b"\xf0\x0f\xc1\x07", [(0xFFFF888000100000, 4, "read-write")]),      # lock xadd [rdi], eax
    (b"\x48\x83\x07\x01", [(0xFFFF888000100000, 8, "read-write")]),      # add qword [rdi], 1
    (b"\x65\x48\x8b\x04\x25\x28\x00\x00\x00", [(0xFFFF88800F600028, 8, "read")]),  # gs:[0x28]
    (b"\x48\x8b\x05\x10\x00\x00\x00", [(RIP + 7 + 0x10, 8, "read")]),    # rip-relative
    (b"\x48\x8d\x47\x08", []),                                           # lea: no access
])
def test_operand_address_size_direction(code, expected):
    _, got = accesses(code)
    assert got == expected


def test_rep_string_ops_report_one_iteration():
    insn, got = accesses(b"\xf3\x48\xa5")                                # rep movsq
    assert insn.rep and insn.is_string
    assert sorted(got) == [(0xFFFF888000100000, 8, "write"), (0xFFFF888000200000, 8, "read")]
    insn, got = accesses(b"\xf3\xaa")                                    # rep stosb
    assert insn.rep and got == [(0xFFFF888000100000, 1, "write")]
    insn, got = accesses(b"\xf3\xa6")                                    # repe cmpsb
    assert insn.rep and sorted(k for _, _, k in got) == ["read", "read"]
    insn, _ = accesses(b"\x48\x8b\x07")
    assert not insn.rep and not insn.is_string and insn.length == 3


def test_index_registers_and_errors():
    _, got = accesses(b"\x8b\x04\x8f", rcx=2)                            # mov eax, [rdi+rcx*4]
    assert got == [(0xFFFF888000100008, 4, "read")]
    _, got = accesses(b"\x67\x8b\x04\x8f", rdi=0x1_0000_1000, rcx=2)    # addr32: edi, ecx
    assert got == [(0x1008, 4, "read")]
    with pytest.raises(DecodeError):
        decode(b"\x0f\x0b"[:1], RIP, REGS)                               # truncated


def test_shadow_states_and_reads():
    s = Shadow()
    base = 0xFFFF888000100000
    s.track(base, 64)
    assert s.check(base, 8).state == UNALLOCATED
    s.set(base, 32, UNINITIALIZED)                  # allocation
    s.set(base + 8, 4, INITIALIZED)                 # a write
    assert s.check(base + 8, 4).ok
    verdict = s.check(base + 8, 8)
    assert verdict.state == UNINITIALIZED and verdict.first_bad == base + 12
    assert s.check(base + 8, 8, partial_ok=True).ok          # 32-bit load of a 16-bit field
    s.set(base, 32, FREED)
    assert s.check(base + 8, 4, partial_ok=True).state == FREED
    assert s.check(0xFFFF888000900000, 8).ok                 # untracked: nothing to say


def test_shadow_copy_across_pages_and_window():
    s = Shadow()
    src, dst = 0xFFFF888000100FF0, 0xFFFF888000300FF8
    s.track(src, 64, UNINITIALIZED)
    s.track(dst, 64, UNINITIALIZED)
    s.set(src, 8, INITIALIZED)
    s.copy(dst, src, 32)                            # movs: shadow travels with the bytes
    assert list(s.get(dst, 12)) == [INITIALIZED] * 8 + [UNINITIALIZED] * 4
    start, letters = s.window(dst + 3)
    assert start == dst & ~31 and len(letters) == 32
    assert letters == "u" * 24 + "i" * 8                # the 8 copied bytes end the window
    assert s.window(dst + 8)[1].startswith("uuuu")       # next page, beyond the copied bytes
