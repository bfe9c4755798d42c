"""kmemcheck's instruction emulator: one faulting instruction completed on the host."""
import pytest

from gdbext.core.emulate import (AF, CF, DF, OF, PF, SF, STATUS_FLAGS, ZF, Effect, MemOp,
                                 Unsupported, alu_add, alu_dec, alu_inc, alu_logic, alu_neg,
                                 alu_sub, condition, emulate, merge_flags, parity)

M64 = (1 << 64) - 1
RIP = 0xFFFFFFFF81000000
HEAP = 0xFFFF888000100000          # rdi
SRC = 0xFFFF888000200000           # rsi
GS = 0xFFFF88800F600000
STACK = 0xFFFFC90000010000
IF_BIT = 0x200                     # bit 1 is always set in rflags; IF is set in kernel code


class FakeMemory:
    """Bytes at virtual addresses; never written memory reads as zero."""

    def __init__(self):
        self.data = {}
        self.reads = []
        self.writes = []

    def read(self, vaddr, size):
        self.reads.append((vaddr, size))
        return bytes(self.data.get((vaddr + i) & M64, 0) for i in range(size))

    def write(self, vaddr, data):
        self.writes.append((vaddr, len(data)))
        for i, b in enumerate(data):
            self.data[(vaddr + i) & M64] = b

    def put(self, vaddr, data):
        for i, b in enumerate(data):
            self.data[vaddr + i] = b

    def get(self, vaddr, size):
        return bytes(self.data.get(vaddr + i, 0) for i in range(size))

    def u(self, vaddr, size=8):
        return int.from_bytes(self.get(vaddr, size), "little")

    def set_u(self, vaddr, value, size=8):
        self.put(vaddr, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))


def regs(**kw):
    r = {n: 0 for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9",
                        "r10", "r11", "r12", "r13", "r14", "r15", "fs_base")}
    r.update(rip=RIP, rflags=0x2 | IF_BIT, gs_base=GS, rdi=HEAP, rsi=SRC, rsp=STACK)
    r.update(kw)
    return r


def run(hexcode, mem=None, branch=False, **kw):
    """Emulate HEXCODE (padded to 16 bytes with int3 like a real fetch); check the invariants
    every instruction shares: rip advanced by the length (unless a branch), all keys kept."""
    code = bytes.fromhex(hexcode.replace(" ", ""))
    mem = mem if mem is not None else FakeMemory()
    before = regs(**kw)
    eff = emulate(code + b"\xcc" * (16 - len(code)), before, mem)
    assert isinstance(eff, Effect)
    assert eff.length == len(code), eff.text
    if not branch:
        assert eff.regs["rip"] == RIP + len(code), eff.text
    assert set(eff.regs) == set(before)
    assert eff.regs is not before and before == regs(**kw)       # input untouched
    assert all(0 <= v <= M64 for v in eff.regs.values())
    return eff, mem


def advanced(eff):
    return eff.regs["rip"] == RIP + eff.length


def status(eff):
    return eff.regs["rflags"] & STATUS_FLAGS


# ---------------------------------------------------------------------------------------------
# ALU functions

def test_add_flags():
    assert alu_add(0x7FFFFFFF, 1, 4) == (0x80000000, OF | SF | AF | PF)
    assert alu_add(0xFFFFFFFF, 1, 4) == (0, CF | ZF | AF | PF)
    assert alu_add(0xFF, 0x80, 1) == (0x7F, CF | OF)                 # -1 + -128: overflow
    assert alu_add(0xFF, 0x80, 1, carry=1) == (0x80, CF | SF | AF)   # -1 + -128 + 1 = -128
    assert alu_add(0x7F, 0, 1, carry=1) == (0x80, OF | SF | AF)
    assert alu_add(1, 2, 8) == (3, PF)
    assert alu_add(M64, M64, 8) == (M64 - 1, CF | SF | AF)


def test_sub_flags():
    assert alu_sub(5, 5, 4) == (0, ZF | PF)                             # equal
    assert alu_sub(3, 5, 4) == (0xFFFFFFFE, CF | SF | AF)               # below, less
    assert alu_sub(5, 3, 4) == (2, 0)                                   # above, greater
    assert alu_sub(0, 1, 4) == (0xFFFFFFFF, CF | SF | AF | PF)
    assert alu_sub(0x80000000, 1, 4) == (0x7FFFFFFF, OF | AF | PF)      # INT_MIN - 1
    assert alu_sub(0x7F, 0xFF, 1) == (0x80, CF | OF | SF)               # 127 - -1
    assert alu_sub(0, 0, 1, borrow=1) == (0xFF, CF | SF | AF | PF)
    assert alu_sub(0x10, 0x0F, 2, borrow=1) == (0, ZF | PF | AF)
    assert alu_neg(0, 4) == (0, ZF | PF)
    assert alu_neg(1, 4) == (0xFFFFFFFF, CF | SF | AF | PF)
    assert alu_neg(0x80, 1) == (0x80, CF | OF | SF)


def test_inc_dec_logic_flags():
    assert alu_inc(0x7FFF, 2) == (0x8000, OF | SF | AF | PF)
    assert alu_inc(0xFF, 1) == (0, ZF | AF | PF)                        # no CF
    assert alu_dec(0, 8) == (M64, SF | AF | PF)                         # no CF
    assert alu_dec(0x80, 1) == (0x7F, OF | AF)
    assert alu_logic(0x1_0000_0080, 1) == (0x80, SF)
    assert alu_logic(0, 8) == (0, ZF | PF)
    assert alu_logic(3, 4) == (3, PF)
    assert parity(0x103) == PF and parity(0x1) == 0


def test_conditions_and_merge():
    assert merge_flags(0x202 | DF | CF, ZF) == 0x202 | DF | ZF
    assert merge_flags(0x202 | CF, ZF | OF, STATUS_FLAGS & ~CF) == 0x202 | CF | ZF | OF
    _, eq = alu_sub(7, 7, 4)
    _, lt = alu_sub(3, 5, 4)                 # 3 < 5 signed and unsigned
    _, neg = alu_sub(0xFFFFFFFF, 1, 4)       # -1 < 1 signed, above unsigned
    _, ovf = alu_sub(0x80000000, 1, 4)       # INT_MIN < 1, OF set
    assert condition("e", eq) and condition("le", eq) and condition("ge", eq)
    assert condition("be", eq) and condition("ae", eq) and not condition("ne", eq)
    assert condition("b", lt) and condition("l", lt) and not condition("g", lt)
    assert condition("a", neg) and condition("l", neg) and condition("s", neg)
    assert condition("l", ovf) and condition("o", ovf) and not condition("s", ovf)
    assert condition("p", PF) and condition("np", 0) and condition("g", 0) and condition("nc", 0)


# ---------------------------------------------------------------------------------------------
# mov family

def test_mov_loads_and_sub_registers():
    mem = FakeMemory()
    mem.set_u(HEAP + 8, 0x1122334455667788)
    mem.set_u(HEAP + 0x10, 0xBEEF, 2)
    eff, _ = run("488b4708", mem)                             # mov rax, [rdi+8]
    assert eff.regs["rax"] == 0x1122334455667788 and advanced(eff)
    assert eff.ops == [MemOp(HEAP + 8, 8, False)] and eff.copy is None
    assert eff.text == "mov rax, qword ptr [rdi + 8]"
    eff, _ = run("8b4708", mem, rax=0xFFFFFFFFFFFFFFFF)      # mov eax, [rdi+8]: zero-extends
    assert eff.regs["rax"] == 0x55667788 and advanced(eff)
    eff, _ = run("668b4710", mem, rax=0xAAAAAAAAAAAAAAAA)    # mov ax, [rdi+0x10]: keeps the rest
    assert eff.regs["rax"] == 0xAAAAAAAAAAAABEEF and advanced(eff)
    assert eff.ops == [MemOp(HEAP + 0x10, 2, False)]
    eff, _ = run("8a6708", mem, rsp=STACK, rax=0x1111)       # mov ah, [rdi+8]
    assert eff.regs["rax"] == 0x8811 and advanced(eff)
    eff, _ = run("408a7708", mem, rsi=0xFFFF)                # mov sil, [rdi+8]
    assert eff.regs["rsi"] == 0xFF88
    eff, _ = run("448b4708", mem, r8=M64)                    # mov r8d, [rdi+8]
    assert eff.regs["r8"] == 0x55667788
    eff, _ = run("66448b4f08", mem, r9=M64)                  # mov r9w, [rdi+8]
    assert eff.regs["r9"] == 0xFFFFFFFFFFFF7788
    eff, _ = run("448a7f09", mem, r15=0)                     # mov r15b, [rdi+9]
    assert eff.regs["r15"] == 0x77


def test_mov_stores():
    eff, mem = run("48894708", rax=0x0102030405060708)      # mov [rdi+8], rax
    assert mem.u(HEAP + 8) == 0x0102030405060708 and advanced(eff)
    assert eff.ops == [MemOp(HEAP + 8, 8, True)]
    eff, mem = run("66894710", rax=0xAAAABBBB)              # mov [rdi+0x10], ax
    assert mem.get(HEAP + 0x10, 3) == b"\xbb\xbb\x00" and eff.ops == [MemOp(HEAP + 0x10, 2, True)]
    eff, mem = run("886701", rax=0x1234)                    # mov [rdi+1], ah
    assert mem.get(HEAP + 1, 1) == b"\x12"
    eff, mem = run("48c74708ffffffff")                      # mov qword [rdi+8], -1 (imm32 sign-ext)
    assert mem.u(HEAP + 8) == M64 and eff.length == 8
    eff, mem = run("c6070a")                                # mov byte [rdi], 0xa
    assert mem.get(HEAP, 2) == b"\x0a\x00" and advanced(eff)
    eff, mem = run("66c7070a00")                            # mov word [rdi], 0xa
    assert mem.u(HEAP, 2) == 10 and eff.ops == [MemOp(HEAP, 2, True)]


def test_addressing_modes():
    mem = FakeMemory()
    mem.set_u(HEAP + 0x40, 0xAB, 1)
    eff, _ = run("0fb6445f20", mem, rbx=0x10)               # movzx eax, byte [rdi+rbx*2+0x20]
    assert eff.regs["rax"] == 0xAB and eff.ops == [MemOp(HEAP + 0x40, 1, False)]
    eff, _ = run("0fb644dfe0", mem, rbx=0x10)               # movzx eax, byte [rdi+rbx*8-0x20]
    assert eff.ops == [MemOp(HEAP + 0x60, 1, False)]
    eff, _ = run("4a8b04e7", mem, r12=3)                    # mov rax, [rdi+r12*8]
    assert eff.ops == [MemOp(HEAP + 24, 8, False)]
    eff, _ = run("4c8b2424", mem)                           # mov r12, [rsp]
    assert eff.ops == [MemOp(STACK, 8, False)]
    # gs: per-CPU load: mov rax, gs:[0x28]
    mem.set_u(GS + 0x28, 0xCAFE)
    eff, _ = run("65488b042528000000", mem)
    assert eff.regs["rax"] == 0xCAFE and eff.ops == [MemOp(GS + 0x28, 8, False)] and advanced(eff)
    # gs: with a base register: mov eax, gs:[rdi] (rdi holds a per-CPU offset)
    eff, _ = run("658b07", mem, rdi=0x28)
    assert eff.ops == [MemOp(GS + 0x28, 4, False)] and eff.regs["rax"] == 0xCAFE
    eff, _ = run("648b07", mem, rdi=0x28, fs_base=0x1000)   # mov eax, fs:[rdi]
    assert eff.ops == [MemOp(0x1028, 4, False)]
    # rip-relative: mov rax, [rip+0x10] / mov eax, [rip-0x10] use the next instruction's address
    mem.set_u(RIP + 7 + 0x10, 0x77)
    eff, _ = run("488b0510000000", mem)
    assert eff.regs["rax"] == 0x77 and eff.ops == [MemOp(RIP + 7 + 0x10, 8, False)]
    eff, _ = run("8b05f0ffffff", mem)
    assert eff.ops == [MemOp(RIP + 6 - 0x10, 4, False)]
    # 0x67: 32-bit address arithmetic: mov eax, [edi+ecx*4+8]
    eff, _ = run("678b448f08", mem, rdi=0x1_FFFF_FFF0, rcx=2)
    assert eff.ops == [MemOp((0xFFFFFFF0 + 8 + 8) & 0xFFFFFFFF, 4, False)] and advanced(eff)
    # movabs al, [moffs64]
    eff, _ = run("a0efcdab8967452301", mem)
    assert eff.ops == [MemOp(0x0123456789ABCDEF, 1, False)] and eff.length == 9


def test_movzx_movsx_movsxd_movbe():
    mem = FakeMemory()
    mem.put(HEAP, bytes([0x80, 0xFF, 0x34, 0x12, 0xFE, 0xFF, 0xFF, 0xFF]))
    eff, _ = run("0fb607", mem, rax=M64)                    # movzx eax, byte [rdi]
    assert eff.regs["rax"] == 0x80
    eff, _ = run("480fbe07", mem)                           # movsx rax, byte [rdi]
    assert eff.regs["rax"] == 0xFFFFFFFFFFFFFF80
    eff, _ = run("0fbe07", mem, rax=M64)                    # movsx eax, byte [rdi]
    assert eff.regs["rax"] == 0xFFFFFF80
    eff, _ = run("660fbe07", mem, rax=0x1111111111111111)   # movsx ax, byte [rdi]
    assert eff.regs["rax"] == 0x111111111111FF80
    eff, _ = run("480fbf07", mem)                           # movsx rax, word [rdi]
    assert eff.regs["rax"] == 0xFFFFFFFFFFFFFF80
    eff, _ = run("0fb74702", mem, rax=M64)                  # movzx eax, word [rdi+2]
    assert eff.regs["rax"] == 0x1234
    eff, _ = run("48634704", mem)                           # movsxd rax, dword [rdi+4]
    assert eff.regs["rax"] == M64 - 1 and advanced(eff)
    eff, _ = run("6307", mem, rax=M64)                      # movsxd eax, dword [rdi] (no REX.W)
    assert eff.regs["rax"] == 0x1234FF80
    eff, _ = run("480f38f007", mem)                         # movbe rax, [rdi]
    assert eff.regs["rax"] == 0x80FF3412FEFFFFFF
    eff, mem2 = run("0f38f107", rax=0x11223344)             # movbe [rdi], eax
    assert mem2.get(HEAP, 4) == bytes.fromhex("11223344") and eff.ops == [MemOp(HEAP, 4, True)]


def test_no_access_instructions():
    for code in ("488d4708",          # lea rax, [rdi+8]
                 "0f1f440000",        # nop dword [rax+rax]
                 "0f1807",            # prefetchnta [rdi]
                 "0f0d0f",            # prefetchw [rdi]
                 "0fae38",            # clflush [rax]
                 "660fae3f"):         # clflushopt [rdi]
        eff, mem = run(code)
        assert eff.ops == [] and advanced(eff) and not mem.reads and not mem.writes, code
    eff, _ = run("488d445f08", rbx=4)                      # lea rax, [rdi+rbx*2+8]
    assert eff.regs["rax"] == HEAP + 16
    eff, _ = run("8d4708", rax=M64)                        # lea eax, [rdi+8]: 32-bit result
    assert eff.regs["rax"] == (HEAP + 8) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# arithmetic and logic

def test_cmp_flags_cases():
    mem = FakeMemory()
    mem.set_u(HEAP, 5, 4)
    for rax, expected in ((5, ZF | PF), (3, CF | SF | AF), (9, 0)):
        eff, _ = run("3b07", mem, rax=rax)                  # cmp eax, [rdi]
        assert status(eff) == expected and advanced(eff)
        assert eff.regs["rax"] == rax and eff.ops == [MemOp(HEAP, 4, False)]
        assert not mem.writes
    mem.set_u(HEAP, 0x7FFFFFFF, 4)
    eff, _ = run("833fff", mem)                             # cmp dword [rdi], -1
    assert status(eff) == CF | OF | SF | PF                 # 0x7fffffff - -1 overflows
    mem.set_u(HEAP, 0, 8)
    eff, _ = run("48833f01", mem)                           # cmp qword [rdi], 1
    assert status(eff) == CF | SF | AF | PF
    eff, _ = run("803f00", mem, rflags=0x2 | IF_BIT | DF | CF | OF)   # cmp byte [rdi], 0
    assert eff.regs["rflags"] == 0x2 | IF_BIT | DF | ZF | PF          # other bits kept


def test_add_sub_family_on_memory():
    mem = FakeMemory()
    mem.set_u(HEAP, 0x7FFFFFFF, 4)
    eff, _ = run("830701", mem)                             # add dword [rdi], 1
    assert mem.u(HEAP, 4) == 0x80000000 and status(eff) == OF | SF | AF | PF
    assert eff.ops == [MemOp(HEAP, 4, False), MemOp(HEAP, 4, True)] and advanced(eff)
    eff, _ = run("f0830701", mem)                           # lock add dword [rdi], 1
    assert mem.u(HEAP, 4) == 0x80000001 and eff.length == 4
    eff, _ = run("480107", mem, rax=0x7FFFFFFF)             # add [rdi], rax
    assert mem.u(HEAP) == 0x100000000 and status(eff) == PF | AF
    eff, _ = run("480307", mem, rax=1)                      # add rax, [rdi]
    assert eff.regs["rax"] == 0x100000001 and mem.u(HEAP) == 0x100000000
    eff, _ = run("0307", mem, rax=0xFFFFFFFF00000001)       # add eax, [rdi]: zero-extends
    assert eff.regs["rax"] == 1 and status(eff) == 0
    mem.set_u(HEAP, 0, 8)
    eff, _ = run("48832f01", mem)                           # sub qword [rdi], 1
    assert mem.u(HEAP) == M64 and status(eff) == CF | SF | AF | PF
    eff, _ = run("481307", mem, rax=0, rflags=0x2 | CF)     # adc rax, [rdi]
    assert eff.regs["rax"] == 0 and status(eff) == CF | ZF | PF | AF
    eff, _ = run("48831701", mem, rflags=0x2 | CF)          # adc qword [rdi], 1
    assert mem.u(HEAP) == 1 and status(eff) & CF
    eff, _ = run("481b07", mem, rax=5, rflags=0x2 | CF)     # sbb rax, [rdi] (5 - 1 - 1)
    assert eff.regs["rax"] == 3 and status(eff) == PF
    eff, _ = run("48831f00", mem, rflags=0x2)               # sbb qword [rdi], 0
    assert mem.u(HEAP) == 1


def test_logic_and_test():
    mem = FakeMemory()
    mem.set_u(HEAP, 0xF0F0, 2)
    eff, _ = run("f64701f0", mem, rflags=0x2 | CF | OF | AF)   # test byte [rdi+1], 0xf0
    assert status(eff) == SF | PF and not mem.writes and advanced(eff)
    eff, _ = run("f6470101", mem)                           # test byte [rdi+1], 1
    assert status(eff) == ZF | PF
    eff, _ = run("853f", mem, rdi=HEAP)                     # test [rdi], edi (low bits 0)
    assert status(eff) == ZF | PF
    eff, _ = run("66810f0f00", mem)                         # or word [rdi], 0xf
    assert mem.u(HEAP, 2) == 0xF0FF and eff.ops[-1] == MemOp(HEAP, 2, True)
    eff, _ = run("802700", mem)                             # and byte [rdi], 0
    assert mem.u(HEAP, 2) == 0xF000 and status(eff) == ZF | PF
    eff, _ = run("3307", mem, rax=0xF000)                   # xor eax, [rdi]
    assert eff.regs["rax"] == 0 and status(eff) == ZF | PF
    eff, _ = run("4831470c", mem, rax=1)                    # xor [rdi+0xc], rax
    assert mem.u(HEAP + 12) == 1
    eff, _ = run("480b07", mem, rax=0x8000000000000000)     # or rax, [rdi]
    assert eff.regs["rax"] == 0x800000000000F000 and status(eff) == SF | PF


def test_inc_dec_neg_not():
    mem = FakeMemory()
    mem.set_u(HEAP, 0xFFFFFFFF, 4)
    eff, _ = run("ff07", mem, rflags=0x2 | CF)              # inc dword [rdi]: CF kept
    assert mem.u(HEAP, 4) == 0 and status(eff) == CF | ZF | PF | AF and advanced(eff)
    assert eff.ops == [MemOp(HEAP, 4, False), MemOp(HEAP, 4, True)]
    eff, _ = run("f0ff0f", mem)                             # lock dec dword [rdi]: CF stays 0
    assert mem.u(HEAP, 4) == 0xFFFFFFFF and status(eff) == SF | PF | AF
    eff, _ = run("48ff4f08", mem)                           # dec qword [rdi+8]
    assert mem.u(HEAP + 8) == M64
    eff, _ = run("f61f", mem)                               # neg byte [rdi]
    assert mem.u(HEAP, 1) == 1 and status(eff) == CF | AF
    eff, _ = run("66f717", mem, rflags=0x2 | ZF)            # not word [rdi]: flags untouched
    assert eff.regs["rflags"] == 0x2 | ZF and eff.ops[-1] == MemOp(HEAP, 2, True)
    mem.set_u(HEAP + 16, 0, 8)
    eff, _ = run("48f75f10", mem)                           # neg qword [rdi+0x10] of 0
    assert mem.u(HEAP + 16) == 0 and status(eff) == ZF | PF


# ---------------------------------------------------------------------------------------------
# atomics

def test_xchg_and_lock_xadd():
    mem = FakeMemory()
    mem.set_u(HEAP, 10, 4)
    eff, _ = run("8707", mem, rax=0xFFFFFFFF00000005)       # xchg [rdi], eax
    assert mem.u(HEAP, 4) == 5 and eff.regs["rax"] == 10 and advanced(eff)
    assert eff.ops == [MemOp(HEAP, 4, False), MemOp(HEAP, 4, True)]
    mem.set_u(HEAP, 0x7FFFFFFF, 4)
    eff, _ = run("f00fc107", mem, rax=1)                    # lock xadd [rdi], eax
    assert mem.u(HEAP, 4) == 0x80000000 and eff.regs["rax"] == 0x7FFFFFFF
    assert status(eff) == OF | SF | AF | PF and eff.length == 4 and advanced(eff)
    assert eff.ops == [MemOp(HEAP, 4, False), MemOp(HEAP, 4, True)]
    mem.set_u(HEAP, M64, 8)
    eff, _ = run("f0480fc107", mem, rax=1)                  # lock xadd [rdi], rax
    assert mem.u(HEAP) == 0 and eff.regs["rax"] == M64 and status(eff) == CF | ZF | PF | AF


def test_cmpxchg_success_and_failure():
    mem = FakeMemory()
    mem.set_u(HEAP, 42, 8)
    eff, _ = run("f0480fb10f", mem, rax=42, rcx=99)         # lock cmpxchg [rdi], rcx
    assert mem.u(HEAP) == 99 and eff.regs["rax"] == 42 and status(eff) == ZF | PF
    assert eff.ops == [MemOp(HEAP, 8, False), MemOp(HEAP, 8, True)] and advanced(eff)
    eff, _ = run("f0480fb10f", mem, rax=42, rcx=7)          # fails: loads rax, writes back
    assert mem.u(HEAP) == 99 and eff.regs["rax"] == 99 and status(eff) & ZF == 0
    assert status(eff) == CF | SF                           # as cmp 42, 99
    assert eff.ops == [MemOp(HEAP, 8, False), MemOp(HEAP, 8, True)] and mem.writes[-1] == (HEAP, 8)
    eff, _ = run("0fb10f", mem, rax=0xFFFFFFFF00000000, rcx=1)   # cmpxchg [rdi], ecx fails
    assert eff.regs["rax"] == 99 and mem.u(HEAP) == 99      # eax loaded, zero-extended
    mem.set_u(HEAP, 99, 4)
    eff, _ = run("0fb10f", mem, rax=0xFFFFFFFF00000063, rcx=1)   # cmpxchg [rdi], ecx succeeds
    assert eff.regs["rax"] == 0xFFFFFFFF00000063 and mem.u(HEAP, 4) == 1   # rax not written
    mem.set_u(HEAP, 0x55, 1)
    eff, _ = run("0fb00f", mem, rax=0x1255, rcx=0x77)       # cmpxchg [rdi], cl succeeds
    assert mem.u(HEAP, 1) == 0x77 and eff.regs["rax"] == 0x1255 and status(eff) & ZF


def test_cmpxchg8b_16b():
    mem = FakeMemory()
    mem.set_u(HEAP, 0x1111111122222222)
    eff, _ = run("0fc70f", mem, rdx=0x11111111, rax=0x22222222, rcx=3, rbx=4)   # cmpxchg8b [rdi]
    assert mem.u(HEAP) == 0x0000000300000004 and status(eff) & ZF and advanced(eff)
    eff, _ = run("0fc70f", mem, rdx=0, rax=0, rflags=0x2 | ZF | CF)
    assert eff.regs["rdx"] == 3 and eff.regs["rax"] == 4 and eff.regs["rflags"] == 0x2 | CF
    assert eff.ops == [MemOp(HEAP, 8, False), MemOp(HEAP, 8, True)]
    mem.set_u(HEAP + 16, 5)
    mem.set_u(HEAP + 24, 6)
    eff, _ = run("f0480fc74f10", mem, rax=5, rdx=6, rbx=7, rcx=8)   # lock cmpxchg16b [rdi+16]
    assert (mem.u(HEAP + 16), mem.u(HEAP + 24)) == (7, 8) and status(eff) & ZF
    assert eff.ops == [MemOp(HEAP + 16, 16, False), MemOp(HEAP + 16, 16, True)]
    with pytest.raises(Unsupported, match="aligned"):
        run("480fc74f08", mem)                             # cmpxchg16b [rdi+8]: #GP


# ---------------------------------------------------------------------------------------------
# bit tests

def test_bt_immediate():
    mem = FakeMemory()
    mem.set_u(HEAP, 0b1000, 4)
    eff, _ = run("0fba2703", mem)                           # bt dword [rdi], 3
    assert status(eff) == CF and not mem.writes and advanced(eff)
    assert eff.ops == [MemOp(HEAP, 4, False)]
    eff, _ = run("0fba2723", mem, rflags=0x2 | ZF | CF)     # bt dword [rdi], 35: imm taken mod 32
    assert eff.regs["rflags"] == 0x2 | ZF | CF              # bit 3 set, ZF untouched
    eff, _ = run("f0480fba2f00", mem)                       # lock bts qword [rdi], 0
    assert mem.u(HEAP) == 0b1001 and status(eff) == 0
    eff, _ = run("480fba3703", mem)                         # btr qword [rdi], 3
    assert mem.u(HEAP) == 0b0001 and status(eff) == CF
    eff, _ = run("480fba3f3f", mem)                         # btc qword [rdi], 63
    assert mem.u(HEAP) == 0x8000000000000001 and status(eff) == 0
    assert eff.ops == [MemOp(HEAP, 8, False), MemOp(HEAP, 8, True)]


def test_bt_register_offset_moves_the_address():
    mem = FakeMemory()
    eff, _ = run("480fab07", mem, rax=130)                  # bts [rdi], rax: 130 = 2*64 + 2
    assert mem.u(HEAP + 16) == 4 and status(eff) == 0 and advanced(eff)
    assert eff.ops == [MemOp(HEAP + 16, 8, False), MemOp(HEAP + 16, 8, True)]
    eff, _ = run("480fab07", mem, rax=130)                  # again: was set
    assert status(eff) == CF
    # bts [rdi], eax with eax = -1: bit 31 of the dword at rdi-4
    eff, _ = run("0fab07", mem, rax=0xFFFFFFFF)
    assert mem.u(HEAP - 4, 4) == 0x80000000
    assert eff.ops == [MemOp(HEAP - 4, 4, False), MemOp(HEAP - 4, 4, True)]
    eff, _ = run("480fa307", mem, rax=M64 - 63)             # bt [rdi], rax: -64 -> bit 0 of [rdi-8]
    assert eff.ops == [MemOp(HEAP - 8, 8, False)] and status(eff) == 0
    eff, _ = run("660fb307", mem, rax=0x10 * 17 + 0xFFFF0000)   # btr [rdi], ax: 272 = 17*16
    assert eff.ops[0] == MemOp(HEAP + 34, 2, False)
    mem.set_u(HEAP + 8, 1 << 5)
    eff, _ = run("480fbb0f", mem, rcx=69)                   # btc [rdi], rcx
    assert mem.u(HEAP + 8) == 0 and status(eff) == CF


# ---------------------------------------------------------------------------------------------
# conditional

def test_cmov_and_setcc():
    mem = FakeMemory()
    mem.set_u(HEAP, 0x1234)
    eff, _ = run("480f4407", mem, rax=1, rflags=0x2 | ZF)   # cmove rax, [rdi]: taken
    assert eff.regs["rax"] == 0x1234 and eff.ops == [MemOp(HEAP, 8, False)] and advanced(eff)
    eff, _ = run("480f4407", mem, rax=1, rflags=0x2)        # not taken: still reads
    assert eff.regs["rax"] == 1 and eff.ops == [MemOp(HEAP, 8, False)]
    eff, _ = run("0f4407", mem, rax=M64, rflags=0x2)        # cmove eax, [rdi] not taken: zero-ext
    assert eff.regs["rax"] == 0xFFFFFFFF
    eff, _ = run("0f4c07", mem, rax=0, rflags=0x2 | SF)     # cmovl eax, [rdi]: SF != OF
    assert eff.regs["rax"] == 0x1234
    eff, _ = run("0f9407", mem, rflags=0x2 | ZF)            # sete byte [rdi]
    assert mem.u(HEAP, 2) == 0x1201 and eff.ops == [MemOp(HEAP, 1, True)] and advanced(eff)
    eff, _ = run("0f974708", mem, rflags=0x2 | CF)          # seta byte [rdi+8]
    assert mem.u(HEAP + 8, 1) == 0 and eff.ops == [MemOp(HEAP + 8, 1, True)]


# ---------------------------------------------------------------------------------------------
# stack and control transfer

def test_push_pop_memory():
    mem = FakeMemory()
    mem.set_u(HEAP + 8, 0xAABB)
    eff, _ = run("ff7708", mem)                             # push qword [rdi+8]
    assert mem.u(STACK - 8) == 0xAABB and eff.regs["rsp"] == STACK - 8 and advanced(eff)
    assert eff.ops == [MemOp(HEAP + 8, 8, False), MemOp(STACK - 8, 8, True)]
    eff, _ = run("ff3424", mem)                             # push qword [rsp]: address before
    assert eff.ops == [MemOp(STACK, 8, False), MemOp(STACK - 8, 8, True)]
    eff, _ = run("66ff7708", mem)                           # push word [rdi+8]
    assert eff.regs["rsp"] == STACK - 2 and mem.u(STACK - 2, 2) == 0xAABB
    eff, _ = run("6648ff7708", mem)                         # REX.W beats 66: push qword
    assert eff.regs["rsp"] == STACK - 8 and eff.ops[0] == MemOp(HEAP + 8, 8, False)
    mem.set_u(STACK, 0x5566)
    eff, _ = run("8f4710", mem)                             # pop qword [rdi+0x10]
    assert mem.u(HEAP + 16) == 0x5566 and eff.regs["rsp"] == STACK + 8 and advanced(eff)
    assert eff.ops == [MemOp(STACK, 8, False), MemOp(HEAP + 16, 8, True)]
    eff, _ = run("8f442408", mem)                           # pop qword [rsp+8]: address after
    assert eff.ops == [MemOp(STACK, 8, False), MemOp(STACK + 16, 8, True)]


def test_call_and_jmp_through_memory():
    mem = FakeMemory()
    target = 0xFFFFFFFF81234560
    mem.set_u(0xFFFF888000300010, target)
    eff, _ = run("ff5010", mem, True, rax=0xFFFF888000300000)   # call [rax+0x10]
    assert eff.regs["rip"] == target and eff.length == 3
    assert eff.regs["rsp"] == STACK - 8 and mem.u(STACK - 8) == RIP + 3   # return address
    assert eff.ops == [MemOp(0xFFFF888000300010, 8, False), MemOp(STACK - 8, 8, True)]
    eff, _ = run("ff6010", mem, True, rax=0xFFFF888000300000)   # jmp [rax+0x10]
    assert eff.regs["rip"] == target and eff.regs["rsp"] == STACK
    assert eff.ops == [MemOp(0xFFFF888000300010, 8, False)]
    mem.set_u(RIP + 6 + 0x100, target)
    eff, _ = run("ff1500010000", mem, True)                 # call [rip+0x100]
    assert eff.regs["rip"] == target and mem.u(STACK - 8) == RIP + 6
    mem.set_u(GS + 0x40, target)
    eff, _ = run("65ff242540000000", mem, True)             # jmp gs:[0x40]
    assert eff.regs["rip"] == target and eff.length == 8


# ---------------------------------------------------------------------------------------------
# string instructions

def test_single_string_ops():
    mem = FakeMemory()
    mem.put(SRC, bytes(range(1, 17)))
    eff, _ = run("a4", mem)                                  # movsb
    assert mem.get(HEAP, 2) == b"\x01\x00" and eff.regs["rsi"] == SRC + 1
    assert eff.regs["rdi"] == HEAP + 1 and eff.regs["rcx"] == 0 and advanced(eff)
    assert eff.ops == [MemOp(SRC, 1, False), MemOp(HEAP, 1, True)] and eff.copy == (HEAP, SRC, 1)
    eff, _ = run("48a5", mem, rflags=0x2 | DF)               # movsq backward
    assert eff.regs["rsi"] == SRC - 8 and eff.regs["rdi"] == HEAP - 8
    assert mem.get(HEAP, 8) == bytes(range(1, 9))
    eff, _ = run("ab", mem, rax=0xFFFFFFFF11223344)          # stosd
    assert mem.u(HEAP, 4) == 0x11223344 and eff.regs["rdi"] == HEAP + 4
    assert eff.ops == [MemOp(HEAP, 4, True)] and eff.copy is None
    eff, _ = run("66ad", mem, rax=M64)                       # lodsw
    assert eff.regs["rax"] == 0xFFFFFFFFFFFF0201 and eff.regs["rsi"] == SRC + 2
    eff, _ = run("ad", mem, rax=M64)                         # lodsd: zero-extends
    assert eff.regs["rax"] == 0x04030201
    eff, _ = run("ae", mem, rax=0x44)                        # scasb: al - [rdi]
    assert status(eff) == ZF | PF and eff.regs["rdi"] == HEAP + 1
    assert eff.ops == [MemOp(HEAP, 1, False)]
    eff, _ = run("a6", mem)                                  # cmpsb: [rsi] - [rdi] = 1 - 0x44
    assert status(eff) == CF | SF | AF | PF
    assert eff.ops == [MemOp(SRC, 1, False), MemOp(HEAP, 1, False)]
    eff, _ = run("65a4", mem, rsi=0x10)                      # movsb with gs: source
    assert eff.ops[0] == MemOp(GS + 0x10, 1, False) and eff.regs["rsi"] == 0x11


def test_rep_movsb_forward_and_backward():
    mem = FakeMemory()
    data = bytes(range(100))
    mem.put(SRC, data)
    eff, _ = run("f3a4", mem, rcx=100)                       # rep movsb
    assert mem.get(HEAP, 101) == data + b"\x00" and advanced(eff)
    assert eff.regs["rcx"] == 0 and eff.regs["rsi"] == SRC + 100 and eff.regs["rdi"] == HEAP + 100
    assert eff.ops == [MemOp(SRC, 100, False), MemOp(HEAP, 100, True)]
    assert eff.copy == (HEAP, SRC, 100)
    assert len(mem.reads) == 1 and len(mem.writes) == 1     # one bulk read, one bulk write
    assert eff.text == "rep movsb byte ptr [rdi], byte ptr [rsi]"
    mem2 = FakeMemory()
    mem2.put(SRC, data)
    eff, _ = run("f3a4", mem2, rcx=10, rsi=SRC + 9, rdi=HEAP + 9, rflags=0x2 | DF)  # backward
    assert mem2.get(HEAP, 10) == data[:10] and mem2.get(HEAP + 10, 1) == b"\x00"
    assert eff.regs["rsi"] == SRC - 1 and eff.regs["rdi"] == HEAP - 1 and eff.regs["rcx"] == 0
    assert eff.ops == [MemOp(SRC, 10, False), MemOp(HEAP, 10, True)]
    assert eff.copy == (HEAP, SRC, 10) and eff.regs["rflags"] == 0x2 | DF


def test_rep_movsq_and_others():
    mem = FakeMemory()
    data = bytes(range(64))
    mem.put(SRC, data)
    eff, _ = run("f348a5", mem, rcx=8)                       # rep movsq
    assert mem.get(HEAP, 64) == data and eff.regs["rdi"] == HEAP + 64 and eff.length == 3
    assert eff.ops == [MemOp(SRC, 64, False), MemOp(HEAP, 64, True)] and advanced(eff)
    eff, _ = run("f348a5", mem, rcx=2, rsi=SRC + 8, rdi=HEAP + 0x108, rflags=0x2 | DF)
    assert mem.get(HEAP + 0x100, 16) == data[:16]            # elements at +8 then +0
    assert eff.ops == [MemOp(SRC, 16, False), MemOp(HEAP + 0x100, 16, True)]
    assert eff.regs["rsi"] == SRC - 8 and eff.regs["rdi"] == HEAP + 0xF8
    eff, _ = run("f2a5", mem, rcx=2)                         # f2 movsd acts as rep
    assert eff.regs["rcx"] == 0 and eff.ops[0] == MemOp(SRC, 8, False)
    eff, _ = run("f3ab", mem, rcx=3, rax=0xAABBCCDD)         # rep stosd
    assert mem.get(HEAP, 12) == bytes.fromhex("ddccbbaa") * 3 and eff.regs["rdi"] == HEAP + 12
    assert eff.ops == [MemOp(HEAP, 12, True)] and eff.regs["rcx"] == 0 and eff.copy is None
    eff, _ = run("f3ac", mem, rcx=4, rax=0)                  # rep lodsb: last byte
    assert eff.regs["rax"] == 3 and eff.regs["rsi"] == SRC + 4


def test_rep_stosb():
    mem = FakeMemory()
    eff, _ = run("f3aa", mem, rcx=4096, rax=0x5A)            # rep stosb
    assert mem.get(HEAP, 4097) == b"\x5a" * 4096 + b"\x00" and advanced(eff)
    assert eff.ops == [MemOp(HEAP, 4096, True)] and len(mem.writes) == 1
    assert eff.regs["rcx"] == 0 and eff.regs["rdi"] == HEAP + 4096
    eff, _ = run("f3aa", mem, rcx=3, rax=0, rdi=HEAP + 2, rflags=0x2 | DF)  # backward
    assert mem.get(HEAP, 4) == b"\x00\x00\x00\x5a" and eff.ops == [MemOp(HEAP, 3, True)]
    assert eff.regs["rdi"] == HEAP - 1


def test_rep_with_zero_count_does_nothing():
    for code in ("f3a4", "f348a5", "f3aa", "f3a6", "f2ae", "f3ac"):
        eff, mem = run(code, rcx=0, rflags=0x2 | CF)
        assert eff.ops == [] and not mem.reads and not mem.writes and advanced(eff), code
        assert eff.regs["rflags"] == 0x2 | CF and eff.regs["rsi"] == SRC
        assert eff.regs["rdi"] == HEAP and eff.copy is None


def test_rep_movs_overlapping_like_hardware():
    # forward, destination one byte into the source: every byte becomes the first one
    mem = FakeMemory()
    mem.put(HEAP, b"abcdefgh")
    eff, _ = run("f3a4", mem, rcx=7, rsi=HEAP, rdi=HEAP + 1)
    assert mem.get(HEAP, 8) == b"aaaaaaaa" and eff.copy == (HEAP + 1, HEAP, 7)
    # forward, distance 3 with byte elements: period 3
    mem.put(HEAP, b"abcdefghij")
    run("f3a4", mem, rcx=7, rsi=HEAP, rdi=HEAP + 3)
    assert mem.get(HEAP, 10) == b"abcabcabca"
    # forward, qwords, distance 3 (< element size): element by element
    mem.put(HEAP, bytes(range(32)))
    run("f348a5", mem, rcx=2, rsi=HEAP, rdi=HEAP + 3)
    ref = bytearray(range(32))
    for i in range(2):
        ref[3 + 8 * i:11 + 8 * i] = ref[8 * i:8 + 8 * i]
    assert mem.get(HEAP, 32) == bytes(ref)
    # destination below the source, forward: same as memmove
    mem.put(HEAP, b"abcdefgh")
    run("f3a4", mem, rcx=7, rsi=HEAP + 1, rdi=HEAP)
    assert mem.get(HEAP, 8) == b"bcdefghh"
    # backward with the destination below the source: the mirror image
    mem.put(HEAP, b"abcdefgh")
    run("f3a4", mem, rcx=7, rsi=HEAP + 7, rdi=HEAP + 6, rflags=0x2 | DF)
    assert mem.get(HEAP, 8) == b"hhhhhhhh"
    # backward with the destination above the source: memmove
    mem.put(HEAP, b"abcdefgh")
    run("f3a4", mem, rcx=7, rsi=HEAP + 6, rdi=HEAP + 7, rflags=0x2 | DF)
    assert mem.get(HEAP, 8) == b"aabcdefg"


def test_repe_cmpsb_stops_at_mismatch():
    mem = FakeMemory()
    mem.put(SRC, b"hello world")
    mem.put(HEAP, b"hello there")
    eff, _ = run("f3a6", mem, rcx=11)                        # repe cmpsb
    # 6 equal bytes ("hello "), stops after comparing 'w' with 't'
    assert eff.regs["rcx"] == 4 and eff.regs["rsi"] == SRC + 7 and eff.regs["rdi"] == HEAP + 7
    assert status(eff) == alu_sub(ord("w"), ord("t"), 1)[1] == PF
    assert eff.ops == [MemOp(SRC, 7, False), MemOp(HEAP, 7, False)] and advanced(eff)
    eff, _ = run("f3a6", mem, rcx=5)                         # all equal: runs out
    assert eff.regs["rcx"] == 0 and status(eff) == ZF | PF
    mem.put(SRC - 2, b"X")
    mem.put(HEAP - 2, b"Y")
    eff, _ = run("f3a6", mem, rcx=9, rsi=SRC + 4, rdi=HEAP + 4, rflags=0x2 | DF)   # backward
    # "olleh", two zero bytes alike, then X against Y
    assert eff.regs["rcx"] == 2 and eff.regs["rsi"] == SRC - 3 and eff.regs["rdi"] == HEAP - 3
    assert eff.ops == [MemOp(SRC - 2, 7, False), MemOp(HEAP - 2, 7, False)]
    assert status(eff) == alu_sub(ord("X"), ord("Y"), 1)[1]
    mem.put(SRC + 0x1000 - 2, b"abcd")                       # crosses a page: chunked reads
    mem.put(HEAP + 0x1000 - 2, b"abcx")
    eff, _ = run("f3a6", mem, rcx=100, rsi=SRC + 0xFFE, rdi=HEAP + 0xFFE)
    assert eff.regs["rcx"] == 96 and eff.ops == [MemOp(SRC + 0xFFE, 4, False),
                                                 MemOp(HEAP + 0xFFE, 4, False)]


def test_repne_scas_and_cmpsq():
    mem = FakeMemory()
    mem.put(HEAP, b"abc\x00def")
    eff, _ = run("f2ae", mem, rcx=M64, rax=0)                # repne scasb (strlen)
    assert eff.regs["rcx"] == M64 - 4 and eff.regs["rdi"] == HEAP + 4 and status(eff) == ZF | PF
    assert eff.ops == [MemOp(HEAP, 4, False)] and advanced(eff)
    eff, _ = run("f3ae", mem, rcx=3, rax=ord("a"))           # repe scasb: stops on 'b'
    assert eff.regs["rcx"] == 1 and status(eff) & ZF == 0
    mem.set_u(SRC, 1)
    mem.set_u(HEAP, 2)
    eff, _ = run("f248a7", mem, rcx=3)                       # repne cmpsq: 1 != 2, 0 == 0
    assert eff.regs["rcx"] == 1 and status(eff) == ZF | PF
    assert eff.ops == [MemOp(SRC, 16, False), MemOp(HEAP, 16, False)]


def test_rep_too_long_is_refused():
    mem = FakeMemory()
    with pytest.raises(Unsupported, match="too much"):
        run("f348a5", mem, rcx=1 << 40)                      # rep movsq of 8 TiB
    assert not mem.reads and not mem.writes


def test_address_size_string_op():
    mem = FakeMemory()
    mem.put(0x2000, b"xy")
    eff, _ = run("67f3a4", mem, rcx=0xFFFFFFFF00000002, rsi=0xAAAA00002000, rdi=0x3000)
    assert mem.get(0x3000, 2) == b"xy" and eff.regs["rcx"] == 0
    assert eff.regs["rsi"] == 0x2002 and eff.regs["rdi"] == 0x3002 and advanced(eff)


# ---------------------------------------------------------------------------------------------
# refusals and caching

@pytest.mark.parametrize("code, what", [
    ("0f1007", "movups"),             # movups xmm0, [rdi]
    ("c5fd6f07", "vmovdqa"),          # vmovdqa ymm0, [rdi]
    ("dd07", "fld"),                  # fld qword [rdi]
    ("4889c7", "mov"),                # mov rdi, rax: no memory operand
    ("ffd0", "call"),                 # call rax
    ("e800000000", "call"),           # call rel32
    ("ec", "in"),                     # in al, dx
    ("6c", "insb"),                   # insb
    ("f3c3", "ret"),                  # rep ret
    ("f3480fb807", "popcnt"),         # popcnt rax, [rdi]
    ("48f727", "mul"),                # mul qword [rdi]
    ("d127", "shl"),                  # shl dword [rdi], 1
    ("ff2f", "jmp"),                  # jmp far [rdi] (m16:32)
    ("48ff2f", "ljmp"),               # jmp far [rdi] (m16:64)
    ("ff1f", "call"),                 # call far [rdi]
    ("4887c7", "xchg"),               # xchg rdi, rax
    ("8e07", "mov"),                  # mov es, word [rdi]
    ("0f0b", "ud2"),
    ("f0480307", "lock"),             # lock add rax, [rdi]: #UD, destination not memory
    ("f08b07", "decode"),             # lock mov eax, [rdi]: #UD (capstone refuses it)
    ("66ff27", "operand-size"),       # jmp word [rdi]: vendors differ
    ("f3ff07", "rep"),                # rep inc dword [rdi]
])
def test_unsupported(code, what):
    mem = FakeMemory()
    with pytest.raises(Unsupported, match=what) as info:
        emulate(bytes.fromhex(code) + b"\x90" * 8, regs(), mem)
    assert "\n" not in str(info.value)
    assert not mem.reads and not mem.writes


def test_undecodable_and_cache():
    with pytest.raises(Unsupported, match="decode"):
        emulate(b"\x0f", regs(), FakeMemory())
    mem = FakeMemory()
    mem.set_u(HEAP, 1)
    code = bytes.fromhex("48ff07") + b"\xcc" * 13          # inc qword [rdi]
    for i in range(3):
        eff = emulate(code, regs(), mem)
    assert mem.u(HEAP) == 4 and eff.length == 3
    eff = emulate(bytearray(code), regs(), mem)            # bytearray input works too
    assert mem.u(HEAP) == 5
