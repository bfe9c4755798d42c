"""Struct layouts from the guest's DWARF, and backtraces out of the page-fault handler through the
entry-stub unwinder, on the real guest."""
import re

from .conftest import Stopped, no_python_errors

PY_SETUP = [
    "python import gdb",
    "python from gdbext.core.layout import describe, field_map, render_field_map, bitfield_bytes",
    "python from gdbext.gdb.layouts import layout_of, object_type_near, pointers_into, type_name",
    "python import gdbext.gdb.unwind as kmem_unwind",
    "python kmem_unwind.register()",
]


def _py(gdb, expr: str) -> str:
    out = gdb.checked(f"python print({expr})")
    no_python_errors(out)
    return out.strip().splitlines()[-1].strip() if out.strip() else ""


def _hex(out: str) -> int:
    return int(out.split("=")[-1].strip().split()[0], 16)


def _frames(bt: str) -> list[tuple[int, str]]:
    """(level, function) of each `bt` line."""
    found = []
    for line in bt.splitlines():
        m = re.match(r"#(\d+)\s+(?:0x[0-9a-f]+ in )?(\S+) \(", line)
        if m:
            found.append((int(m.group(1)), m.group(2)))
    return found


def _level(frames, name: str) -> int:
    for level, function in frames:
        if function == name:
            return level
    raise AssertionError(f"no frame {name} in {frames}")


def test_layouts_from_dwarf(lab):
    with Stopped(lab) as gdb:
        for line in PY_SETUP:
            gdb.checked(line)
        # 6.1 x86-64 (`ptype /o struct kernel_siginfo`): si_code @8 (4), 4-byte hole @12,
        # union __sifields @16 (32), size 48.
        assert _py(gdb, "layout_of('struct kernel_siginfo').size") == "48"
        assert _py(gdb, "describe(layout_of('struct kernel_siginfo'), 12).text") == \
            "padding between si_code and _sifields in struct kernel_siginfo"
        assert _py(gdb, "describe(layout_of('kernel_siginfo_t'), 13, 2).kind") == "padding"
        assert _py(gdb, "describe(layout_of('struct kernel_siginfo'), 8).text") == \
            "struct kernel_siginfo.si_code"
        assert _py(gdb, "describe(layout_of('struct kernel_siginfo'), 20).text") == \
            "struct kernel_siginfo._sifields._kill._uid"
        assert _py(gdb, "describe(layout_of('struct kernel_siginfo'), 36).text") == \
            "trailing padding after _sys_private in struct kernel_siginfo._sifields._timer"
        # struct siginfo (uapi): union { struct { __SIGINFO }; int _si_pad[32]; }, 128 bytes.
        assert _py(gdb, "describe(layout_of('struct siginfo'), 12).text") == \
            "padding between si_code and _sifields in struct siginfo"
        assert _py(gdb, "describe(layout_of('struct siginfo'), 100).text") == \
            "struct siginfo._si_pad[25]"
        assert _py(gdb, "describe(layout_of('struct list_head'), 8).text") == \
            "struct list_head.prev"
        assert _py(gdb, "describe(layout_of('struct list_head'), 16).kind") == "outside"
        # Field offsets agree with gdb's own arithmetic on a big struct.
        off = _hex(gdb.checked("p/x (unsigned long)&((struct task_struct *)0)->comm"))
        assert _py(gdb, f"describe(layout_of('struct task_struct'), {off + 3}).text") == \
            "struct task_struct.comm[3]"
        rows = gdb.checked("python print(render_field_map(field_map(layout_of('struct "
                           "kernel_siginfo'), 'i' * 12 + 'uuuu' + 'i' * 32), {12}))")
        assert re.search(r"\+12\s+<padding>\s+\(4\)\s+uuuu\s+<-- read here", rows), rows
        assert re.search(r"\+8\s+si_code\s+\(4\)\s+iiii$", rows, re.M), rows
        # Bitfields: struct task_struct has sched_reset_on_fork:1 and friends.
        # In 6.1 x86-64: sched_remote_wakeup..reported_split_lock in one byte, then a 7-byte hole.
        off = int(_py(gdb, "[f.bitpos for f in gdb.lookup_type('struct task_struct').fields() "
                           "if f.name == 'in_execve'][0] // 8"))
        assert off in eval(_py(gdb, "sorted(bitfield_bytes(layout_of('struct task_struct')))"))
        text = _py(gdb, f"describe(layout_of('struct task_struct'), {off}).text")
        assert text.startswith("bitfields ") and "in_execve" in text, text
        assert _py(gdb, f"describe(layout_of('struct task_struct'), {off + 1}).text") == \
            "padding between reported_split_lock and atomic_flags in struct task_struct"
        err = gdb.cmd("python layout_of('struct kmemgdb_no_such_type')")
        assert "the guest kernel has no type struct kmemgdb_no_such_type" in err


def _hidden_counter(lab, gdb) -> int:
    addr = _hex(gdb.checked("p/x &kmemgdb_hello_counter"))
    assert "hidden by kmemgdb" in gdb.checked(f"kmem pte hide {addr:#x}")
    return addr


def _stop_at_fault(lab, location: str, address_register: str):
    """Hide the hello module's counter page, break at LOCATION for faults on it (the faulting
    address in ADDRESS_REGISTER), poke the module and wait for the stop:
    (gdb, counter address, the poke's guest command)."""
    with Stopped(lab) as gdb:
        for line in PY_SETUP:
            gdb.checked(line)
        addr = _hidden_counter(lab, gdb)
        gdb.checked(f"break *{location} "
                    f"if ((unsigned long)${address_register} >> 12) == {addr >> 12:#x}")
    poke = lab.guest.start_command("echo 1 > /sys/kernel/debug/kmemgdb_hello")
    assert location in lab.gdb.wait_stop(timeout=60)
    return lab.gdb, addr, poke


def _counter_advanced(lab, poke):
    assert poke.wait(30)[1] == 0
    out, _ = lab.run("dmesg | grep 'kmemgdb_hello: counter'")
    assert "counter 2" in out
    lab.guest.check()      # no oops, no panic


def _recover(g, undo: list[str]) -> None:
    """After a failed assertion at the stop: show the page, undo the fault, let the guest run, so
    the failure is reported instead of a hung guest."""
    for command in ["kmem pte show-all", "delete", "frame 0", *undo]:
        g.cmd(command)
    g.cont()


def test_backtrace_from_the_page_fault_handler_reaches_the_faulting_function(lab):
    lab.run("insmod /modules/kmemgdb_hello.ko")
    try:
        # Called by exc_page_fault (do_kern_addr_fault, inlined) for kernel-address faults;
        # at its first instruction rsi is the faulting address.
        g, addr, poke = _stop_at_fault(lab, "spurious_kernel_fault", "rsi")
        try:
            _inspect_handler_stop(g)
        except BaseException:
            _recover(g, ["return 1"])
            raise
        # Let the access run again with the page present: make the kernel treat the fault as
        # spurious (a not-present fault never is: bad_area_nosemaphore would oops).
        g.checked("frame 0")
        g.checked(f"kmem pte show {addr:#x}")
        g.checked("delete")
        out = g.checked("return 1")
        assert "exc_page_fault" in out or "do_kern_addr_fault" in out, out
        g.cont()
        _counter_advanced(lab, poke)
    finally:
        lab.run("rmmod kmemgdb_hello")


def _inspect_handler_stop(g) -> None:
    bt = g.checked("bt")
    frames = _frames(bt)
    names = [f for _, f in frames]
    # The handler, the entry stub, then the interrupted function and its callers.
    order = ["spurious_kernel_fault", "exc_page_fault", "asm_exc_page_fault",
             "kmemgdb_hello_poke", "kmemgdb_hello_write", "vfs_write"]
    levels = [_level(frames, n) for n in order]
    assert levels == sorted(levels), bt
    assert _level(frames, "kmemgdb_hello_poke") == _level(frames, "asm_exc_page_fault") + 1
    assert "entry_SYSCALL_64" in names, bt
    assert _py(g, "kmem_unwind.UNWINDER.errors") == "0", \
        _py(g, "kmem_unwind.UNWINDER.last_error")

    # The stub frame's rsp is the pt_regs the entry code pushed; the interrupted frame's
    # registers are the ones saved there.
    g.checked(f"frame {_level(frames, 'asm_exc_page_fault')}")
    regs = _hex(g.checked("p/x $rsp"))
    ip = _hex(g.checked(f"p/x ((struct pt_regs *){regs:#x})->ip"))
    assert _hex(g.checked(f"p/x ((struct pt_regs *){regs:#x})->cs")) == 0x10
    poke = g.checked(f"frame {_level(frames, 'kmemgdb_hello_poke')}")
    assert "kmemgdb_hello_poke" in poke and "kmemgdb_hello.c" in poke, poke
    # The frame's pc is the saved ip + 1 (see gdbext/gdb/unwind.py): the fault is at
    # kmemgdb_hello_poke+0, and gdb names a caller frame after pc - 1.
    assert _hex(g.checked("p/x $pc")) == ip + 1
    assert "<kmemgdb_hello_poke>" in g.checked(f"x/i {ip:#x}")
    assert _py(g, "hex(kmem_unwind.interrupted_pc(gdb.selected_frame()))") == hex(ip)
    saved_sp = _hex(g.checked(f"p/x ((struct pt_regs *){regs:#x})->sp"))
    assert _hex(g.checked("p/x $rsp")) == saved_sp
    no_python_errors(g.cmd("info locals"))
    # Callers of the interrupted function have their arguments back.
    g.checked(f"frame {_level(frames, 'vfs_write')}")
    assert _py(g, "kmem_unwind.interrupted_pc(gdb.selected_frame())") == "None"
    args = g.checked("info args")
    m = re.search(r"^file = (?:\(struct file \*\) )?(0x[0-9a-f]+)", args, re.M)
    assert m, args
    file_addr = int(m.group(1), 16)

    # Type discovery: pointer variables of the frames name the objects they point into.
    assert _py(g, f"type_name(object_type_near({regs:#x}, 168, 16)[0])") == "struct pt_regs"
    assert _py(g, f"hex(object_type_near({regs:#x}, 168, 16)[1])") == hex(regs)
    assert _py(g, f"object_type_near({regs + 8:#x}, 8, 16)") == "None"   # interior: no start
    inner = _py(g, f"[(p.name, p.function) for p in pointers_into({regs:#x}, 168, 16)][0]")
    assert "exc_page_fault" in inner or "do_kern_addr_fault" in inner \
        or "handle_page_fault" in inner, inner
    size = int(_py(g, "gdb.lookup_type('struct file').sizeof"))
    assert _py(g, f"type_name(object_type_near({file_addr:#x}, {size}, 16)[0])") == "struct file"
    assert _py(g, f"object_type_near({file_addr:#x}, {size}, 2)") == "None"  # too few frames


def test_backtrace_at_the_entry_stub_uses_the_hardware_frame(lab):
    lab.run("insmod /modules/kmemgdb_hello.ko")
    try:
        g, addr, poke = _stop_at_fault(lab, "asm_exc_page_fault", "cr2")
        undo = [f"set ${reg} = *(long *)($rsp + {slot})"
                for reg, slot in (("rip", 8), ("eflags", 24), ("rsp", 32))]
        try:
            _inspect_stub_stop(g)
        except BaseException:
            _recover(g, undo)
            raise
        g.checked(f"kmem pte show {addr:#x}")
        g.checked("delete")
        # Undo the exception from the hardware frame so the access re-runs (as test_kmem does).
        for command in undo:
            g.checked(command)
        g.cont()
        _counter_advanced(lab, poke)
    finally:
        lab.run("rmmod kmemgdb_hello")


def _inspect_stub_stop(g) -> None:
    frames = _frames(g.checked("bt"))
    assert [f for _, f in frames][:3] == ["asm_exc_page_fault", "kmemgdb_hello_poke",
                                          "kmemgdb_hello_write"], frames
    # At the stub's first instruction: [rsp] error code, +8 rip, +24 rflags, +32 rsp.
    hw_rip = _hex(g.checked("p/x *(long *)($rsp + 8)"))
    hw_rsp = _hex(g.checked("p/x *(long *)($rsp + 32)"))
    g.checked("frame 1")
    assert _hex(g.checked("p/x $pc")) == hw_rip + 1
    assert _py(g, "hex(kmem_unwind.interrupted_pc(gdb.selected_frame()))") == hex(hw_rip)
    assert _hex(g.checked("p/x $rsp")) == hw_rsp
    assert _py(g, "kmem_unwind.UNWINDER.errors") == "0", \
        _py(g, "kmem_unwind.UNWINDER.last_error")
    g.checked("frame 0")
