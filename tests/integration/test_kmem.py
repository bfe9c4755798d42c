"""`kmem info`, `kmem vtop` and `kmem pte` against what the guest itself reports."""
import re

from .conftest import Stopped, expect_errors, field, refused_while_running


def test_info_matches_the_guest(lab):
    release, _ = lab.run("uname -r")
    meminfo, _ = lab.run("grep MemTotal /proc/meminfo")
    cmdline, _ = lab.run("cat /proc/cmdline")
    caches, _ = lab.run("ls -l /sys/kernel/slab | grep -c '^d'")
    with Stopped(lab) as gdb:
        out = gdb.checked("kmem info")
    assert field(out, "kernel release") == release.strip()
    assert field(out, "memory total") == f"{meminfo.split()[1]} kB (MemTotal)"
    assert field(out, "command line") == cmdline.strip()
    assert field(out, "slab caches") == caches.strip()
    assert field(out, "host RAM mapping").startswith("active (/dev/shm/kmemgdb-")
    assert field(out, "page_offset_base").startswith("0xffff888000000000")


def test_kernel_messages_stay_out_of_shell_output(lab):
    since = len(lab.guest.console.text)
    out, status = lab.run("echo one; echo kernel-says-hi >/dev/kmsg; echo two")
    assert (out, status) == ("one\ntwo\n", 0)
    assert "kernel-says-hi" in lab.guest.console.text[since:]   # already there on return


def test_pausing_through_qemu_is_the_stop_gdb_waits_for(lab):
    """The driver's answer to a lost Ctrl-C: gdb reports a QMP pause as SIGINT."""
    lab.guest.pause()
    assert "SIGINT" in lab.gdb.wait_stop(timeout=30)
    lab.gdb.cont()
    assert lab.run("echo alive") == ("alive\n", 0)


def test_info_lists_modules_like_lsmod(lab):
    lab.run("insmod /modules/kmemgdb_hello.ko")
    try:
        with Stopped(lab) as gdb:
            out = gdb.checked("kmem info")
        assert field(out, "modules") == "1: kmemgdb_hello"
    finally:
        lab.run("rmmod kmemgdb_hello")


def test_vtop_agrees_with_proc_iomem(lab):
    iomem, _ = lab.run("grep -E 'Kernel (code|data)' /proc/iomem")
    ranges = {m.group(3): (int(m.group(1), 16), int(m.group(2), 16))
              for m in re.finditer(r"([0-9a-f]+)-([0-9a-f]+) : Kernel (code|data)", iomem)}
    with Stopped(lab) as gdb:
        text = gdb.checked("kmem vtop _text")
        data = gdb.checked("kmem vtop &init_uts_ns")
        gdb_bytes = gdb.checked("x/8xb &init_uts_ns")
    assert int(field(text, "physical"), 16) == ranges["code"][0]
    lo, hi = ranges["data"]
    data_phys = int(field(data, "physical"), 16)
    assert lo <= data_phys <= hi
    # The same bytes through the host RAM mapping and through gdb's virtual read.
    want = bytes(int(b, 16) for b in re.findall(r"0x([0-9a-f]{2})", gdb_bytes.split(":", 1)[1]))
    assert lab.guest.ram_path
    with open(lab.guest.ram_path, "rb") as ram:
        ram.seek(data_phys)
        assert ram.read(8) == want


def test_hidden_page_faults_and_showing_it_lets_the_guest_continue(lab):
    lab.run("insmod /modules/kmemgdb_hello.ko")
    try:
        with Stopped(lab) as gdb:
            addr = int(gdb.checked("p/x &kmemgdb_hello_counter").split("=")[1], 16)
            hide = gdb.checked(f"kmem pte hide {addr:#x}")
            assert "hidden by kmemgdb" in hide
            gdb.checked(f"break *asm_exc_page_fault if ((unsigned long)$cr2 >> 12) == {addr >> 12:#x}")
        poke = lab.guest.start_command("echo 1 > /sys/kernel/debug/kmemgdb_hello")
        stop = lab.gdb.wait_stop(timeout=60)
        assert "asm_exc_page_fault" in stop
        assert int(lab.gdb.checked("p/x (unsigned long)$cr2").split("=")[1], 16) == addr
        assert "1 hidden page" in lab.gdb.checked("kmem pte list")
        lab.gdb.checked(f"kmem pte show {addr:#x}")
        lab.gdb.checked("delete")
        # A not-present fault is never "spurious" to the kernel: undo the exception from the
        # hardware frame ([rsp] error code, +8 rip, +24 rflags, +32 rsp) so the access re-runs.
        for reg, slot in (("rip", 8), ("eflags", 24), ("rsp", 32)):
            lab.gdb.checked(f"set ${reg} = *(long *)($rsp + {slot})" if reg != "rsp"
                            else "set $rsp = *(long *)($rsp + 32)")
        lab.gdb.cont()
        assert poke.wait(30)[1] == 0
        out, _ = lab.run("dmesg | grep 'kmemgdb_hello: counter'")
        assert "counter 2" in out
        lab.guest.check()      # no oops, no panic
    finally:
        lab.run("rmmod kmemgdb_hello")


def test_bad_input_gives_one_line_errors(lab):
    with Stopped(lab) as gdb:
        expect_errors(gdb, [
            ("kmem vtop 0x1234", "0x1234 is not mapped"),
            ("kmem vtop no_such_symbol", "cannot evaluate 'no_such_symbol'"),
            ("kmem vtop 0x0000800000000000", "not a canonical"),
            ("kmem vtop", "the following arguments are required"),
            ("kmem info extra", "unrecognized arguments"),
            ("kmem frobnicate", "unknown subcommand 'frobnicate'"),
            ("kmem pte hide _text", "mapped by a 2 MiB page"),
            ("kmem pte show &init_uts_ns", "was not hidden by kmemgdb"),
            ("kmem fail-alloc some_module", "expected MODULE N with N >= 1, or off"),
            ("kmem fail-alloc some_module 0", "expected MODULE N with N >= 1, or off"),
            ("kmem fail-alloc some_module x", "invalid int value"),
        ])
        assert "no fail-alloc plan" in gdb.checked("kmem fail-alloc")


def test_commands_refuse_a_running_guest(lab):
    with Stopped(lab) as gdb:
        refused_while_running(gdb, "kmem info")
        assert "kernel release" in gdb.checked("kmem info")


def _pte_present(lab, cr3: int, addr: int) -> bool:
    from gdbext.core import paging
    from gdbext.core.memory import RamFileMemory
    ram = RamFileMemory(lab.guest.ram_path)
    try:
        return paging.find_pte(ram, cr3, addr).present
    finally:
        ram.close()


def test_detach_shows_hidden_pages_again(lab):
    lab.run("insmod /modules/kmemgdb_hello.ko")
    try:
        with Stopped(lab) as gdb:
            addr = int(gdb.checked("p/x &kmemgdb_hello_counter").split("=")[1], 16)
            cr3 = int(gdb.checked("p/x (unsigned long)$cr3").split("=")[1], 16)
            gdb.checked(f"kmem pte hide {addr:#x}")
            assert not _pte_present(lab, cr3, addr)
            out = gdb.checked("detach")
            assert "1 hidden page(s) shown again" in out
            assert _pte_present(lab, cr3, addr)
            gdb.connect(lab.guest.port)
        out, status = lab.run("echo 1 > /sys/kernel/debug/kmemgdb_hello; echo ok")
        assert status == 0 and "ok" in out
    finally:
        lab.run("rmmod kmemgdb_hello")


def test_completion_names_the_guests_caches_and_modules(lab):
    listing, _ = lab.run("ls /sys/kernel/slab")
    lab.run("insmod /modules/kmemgdb_hello.ko")
    try:
        with Stopped(lab) as gdb:
            caches = gdb.checked("complete kmemcheck track cache kmalloc-").splitlines()
            modules = gdb.checked("complete kmemcheck track module ").splitlines()
            suppress = gdb.checked("complete kmemcheck suppress cache=kmalloc-6").splitlines()
            fail = gdb.checked("complete kmem fail-alloc kmemgdb_").splitlines()
    finally:
        lab.run("rmmod kmemgdb_hello")
    assert "kmemcheck track cache kmalloc-64" in caches, caches
    names = {c.removeprefix("kmemcheck track cache ") for c in caches}
    assert names <= set(listing.split()), (names, listing)      # what the guest calls them
    assert "kmemcheck track module kmemgdb_hello" in modules, modules
    assert "kmemcheck suppress cache=kmalloc-64" in suppress, suppress
    assert fail == ["kmem fail-alloc kmemgdb_hello"]


def test_completion_of_guest_names_waits_for_a_stop(lab):
    with Stopped(lab) as gdb:
        gdb.cmd("continue &")           # background execution: the prompt is back, guest runs
        assert gdb.cmd("complete kmemcheck track cache kmalloc-").strip() == ""
        gdb.send("interrupt")
        gdb.expect("SIGINT")
        gdb.cmd("")
        caches = gdb.checked("complete kmemcheck track cache kmalloc-")
        assert "kmemcheck track cache kmalloc-64" in caches
