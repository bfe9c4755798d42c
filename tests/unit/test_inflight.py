import struct

from gdbext.core.inflight import FaultPath

PATH = FaultPath(((0x1000, 0x1100), (0x2000, 0x2400)))


def stack(*words: int) -> bytes:
    return struct.pack(f"<{len(words)}Q", *words)


def test_pc_on_the_path():
    assert PATH.may_be_in_flight(0x1000, b"")
    assert PATH.may_be_in_flight(0x23ff, b"")
    assert not PATH.may_be_in_flight(0x2400, b"")


def test_return_address_into_the_path_counts():
    # stopped in a callee (irqentry_enter) of exc_page_fault: its return address is on the stack
    assert PATH.may_be_in_flight(0x9000, stack(0, 0xdead, 0x2104))
    assert not PATH.may_be_in_flight(0x9000, stack(0, 0xdead, 0x3000))


def test_ragged_stack_tail_is_ignored():
    assert not PATH.may_be_in_flight(0x9000, stack(0x5000) + b"\x04\x21")
