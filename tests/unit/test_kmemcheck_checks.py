"""kmemcheck's checks on itself, on plain values: verify mode's expectation of one guest step,
the watchdog's notion of progress, backtraces from stack snapshots, hidden pages the guest
took back."""
import struct

from gdbext.core import paging
from gdbext.core.emulate import AF, CF, ZF, emulate
from gdbext.core.hidden import HiddenPages
from gdbext.core.memory import FakeMemory
from gdbext.core.stackscan import backtrace, call_before
from gdbext.core.verify import native_check
from gdbext.core.watchdog import FAULT_LOOP_RATE, FaultLog, Watchdog

from .fakeguest import FakePageTables

REGS = dict({r: 0 for r in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10",
                            "r11", "r12", "r13", "r14", "r15", "fs_base", "gs_base")},
            rip=0xFFFF_FFFF_8100_0000, rsp=0xFFFF_C900_0000_8000, rflags=0x246)


class Bytes:
    """Flat memory at address 0x1000 and up."""

    def __init__(self, data: bytes):
        self.data = bytearray(data)

    def read(self, addr, n):
        return bytes(self.data[addr - 0x1000:addr - 0x1000 + n])

    def write(self, addr, data):
        self.data[addr - 0x1000:addr - 0x1000 + len(data)] = data


class Staged:
    def __init__(self, mem):
        self.mem, self.writes = mem, []

    def read(self, addr, n):
        return self.mem.read(addr, n)

    def write(self, addr, data):
        self.writes.append((addr, bytes(data)))


def checked(code_hex: str, mem: Bytes, **regs):
    """The host's result for the instruction CODE_HEX and what verify expects of one step."""
    code = bytes.fromhex(code_hex) + b"\x90" * 14
    regs = dict(REGS, **regs)
    staged = Staged(mem)
    host_regs = emulate(code, regs, staged).regs
    return host_regs, native_check(code, regs, host_regs, staged.writes, mem)


def test_a_plain_instruction_is_checked_whole():
    mem = Bytes(bytes(range(64)))
    host_regs, check = checked("488b07", mem, rdi=0x1008)          # mov rax, [rdi]
    assert not check.partial and check.differences(dict(host_regs), mem.read) == []
    wrong = dict(host_regs, rax=host_regs["rax"] + 1)
    (diff,) = check.differences(wrong, mem.read)
    assert diff.startswith("rax host=") and "488b07" in check.describe([diff])


def test_memory_written_by_the_guest_is_compared():
    mem = Bytes(bytes(64))
    host_regs, check = checked("488907", mem, rdi=0x1000, rax=0x1122334455667788)  # mov [rdi], rax
    mem.write(0x1000, (0x1122334455667788).to_bytes(8, "little"))
    assert check.differences(host_regs, mem.read) == []
    mem.write(0x1000, bytes(8))
    assert check.differences(host_regs, mem.read)[0].startswith("memory at 0x1000")


def test_a_rep_instruction_is_checked_one_iteration_at_a_time():
    """Single-stepped, rep movsq traps after its first element: rcx one less, rip still on it."""
    mem = Bytes(bytes(range(64)) + bytes(64))
    _, check = checked("f348a5", mem, rsi=0x1000, rdi=0x1040, rcx=8)   # rep movsq
    assert check.partial
    assert (check.regs["rcx"], check.regs["rsi"], check.regs["rip"]) == (7, 0x1008, REGS["rip"])
    assert check.writes == [(0x1040, bytes(range(8)))]


def test_repe_cmps_that_stops_at_once_advances_rip():
    mem = Bytes(b"ab" + bytes(62) + b"xb" + bytes(62))
    _, check = checked("f3a6", mem, rsi=0x1000, rdi=0x1040, rcx=5)   # repe cmpsb: differs at once
    assert check.regs["rcx"] == 4 and check.regs["rip"] == REGS["rip"] + 2


def test_flags_the_architecture_leaves_undefined_are_not_compared():
    mem = Bytes(bytes(8))
    host_regs, check = checked("480fab37", mem, rdi=0x1000, rsi=3)   # bts [rdi], rsi
    mem.write(0x1000, bytes([8]))
    guest = dict(host_regs, rflags=host_regs["rflags"] ^ ZF ^ AF)
    assert check.differences(guest, mem.read) == []
    assert check.differences(dict(guest, rflags=guest["rflags"] ^ CF), mem.read)


def test_watchdog_progress_and_its_absence():
    dog = Watchdog(10)
    dog.resumed(0)
    assert dog.check(0, 100) is None
    assert dog.check(9, 100) is None
    assert "clock" in dog.check(12, 100)              # jiffies stood still for 12 s
    dog.resumed(20)                                   # a stop in between: counting starts again
    assert dog.check(25, 100) is None
    dog.stopped()
    assert dog.check(100, 100) is None                # a stopped guest is not stuck


def test_watchdog_sees_a_fault_loop_but_not_a_slow_repeat():
    dog = Watchdog(10)
    dog.resumed(0)
    rate = 3 * FAULT_LOOP_RATE
    for i in range(10 * rate):
        dog.fault(i / rate, ("same", 1))
        assert dog.check(i / rate, i) is None
    assert "faulted" in dog.check(10.5, 2000)
    slow = Watchdog(10)
    slow.resumed(0)
    for t in range(20):                                 # once a second: a timer, not a loop
        slow.fault(t, ("same", 1))
    assert slow.check(20, 5000) is None


def test_watchdog_sees_a_hook_that_does_not_return():
    dog = Watchdog(10)
    dog.resumed(0)
    dog.hook(1)
    assert dog.check(5, None) is None and "hook" in dog.check(11.5, None)
    dog.hook(None)
    assert dog.check(30, None) is None


def test_fault_log_keeps_the_last_and_counts_all():
    log = FaultLog(size=2)
    for i in range(3):
        log.add(float(i), 0x1000 + i, 0x2000, b"\x8b\x07", "emulated")
    lines = log.render(3.0, lambda pc: "f+0x0/0x3" if pc == 0x2000 else "")
    assert len(lines) == 2 and "0x1002" in lines[-1] and "8b07" in lines[-1]
    assert "rip 0x2000 f+0x0/0x3" in lines[-1]
    assert log.counts == {"emulated": 3}


FUNCS = {"inner": (0x1000, 0x1100), "middle": (0x2000, 0x2100), "outer": (0x3000, 0x3100)}


def code_with_call(ret: int, target: int | None) -> bytes:
    """The 8 bytes before RET: a direct call to TARGET, or an indirect `call *%rax`."""
    if target is None:
        return b"\x90" * 6 + b"\xff\xd0"
    return b"\x90" * 3 + b"\xe8" + struct.pack("<i", target - ret)


def test_backtrace_follows_checked_return_addresses_and_skips_stale_words():
    calls = {0x2040: FUNCS["inner"][0], 0x2080: FUNCS["inner"][0],   # both call inner
             0x3050: FUNCS["middle"][0]}
    stale = 0x2080                                       # an older return into middle
    stack = struct.pack("<6Q", 0x1234, stale - 0x10, 0x2040, 0xDEAD, 0x3050, 0)

    def function_of(addr):
        return next((r for r in FUNCS.values() if r[0] <= addr < r[1]), None)

    def read_code(addr, n):
        ret = addr + n
        return code_with_call(ret, calls.get(ret)) if ret in calls else b"\x90" * n

    frames = backtrace(0x1050, stack, function_of, read_code)
    assert frames == [0x1050, 0x2040, 0x3050]


def test_an_indirect_call_is_accepted_without_a_target():
    assert call_before(code_with_call(0x2000, None), 0x2000) == (True, None)
    assert call_before(b"\x90" * 8, 0x2000) == (False, None)


def test_hidden_pages_the_guest_took_back_are_not_ours():
    mem = FakeMemory(1 << 32)
    pt = FakePageTables(mem)
    page = 0xFFFF_8880_0012_3000
    pte_at = pt.map(page, 0x5000)
    hidden = HiddenPages(mem, lambda: None)
    hidden.hide(pt.cr3, page)
    assert hidden.owns(page) and hidden.frame(page) == 0x5000
    # debug_pagealloc unmapping it on free: RW cleared too, frame (inverted) kept
    value = int.from_bytes(mem.read(pte_at, 8), "little")
    mem.write(pte_at, (value & ~paging.RW).to_bytes(8, "little"))
    assert not hidden.owns(page) and hidden.frame(page) is None
    assert hidden.readopt(page) and hidden.owns(page)      # same frame, still not present
    # vfree clearing the PTE: someone else's page now
    mem.write(pte_at, bytes(8))
    assert not hidden.readopt(page)
    hidden.show(page)
    assert int.from_bytes(mem.read(pte_at, 8), "little") == 0, "a cleared PTE is left alone"


def test_suppression_file_lines():
    from gdbext.core.kmemcheck_report import suppression_specs
    text = "# accepted findings\nfield=mydriver_req.retries\n\n  site=foo_*   # old driver\ncache=x\n"
    assert suppression_specs(text) == [(2, "field=mydriver_req.retries"), (4, "site=foo_*"),
                                       (5, "cache=x")]
