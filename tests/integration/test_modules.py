"""Module symbols arrive when the guest loads a module and leave when it unloads it."""
from .conftest import Stopped, no_python_errors


def test_module_symbols_follow_load_and_unload(lab):
    with Stopped(lab) as gdb:
        assert "No symbol" in gdb.cmd("info address kmemgdb_hello_poke")
    lab.run("insmod /modules/kmemgdb_hello.ko")
    with Stopped(lab) as gdb:
        out = gdb.checked("break kmemgdb_hello_poke")
        assert "Breakpoint" in out and "kmemgdb_hello.c" in out
    poke = lab.guest.start_command("echo 1 > /sys/kernel/debug/kmemgdb_hello")
    stop = lab.gdb.wait_stop(timeout=60)
    assert "kmemgdb_hello_poke" in stop
    bt = lab.gdb.checked("bt 4")
    assert "kmemgdb_hello_poke" in bt and "kmemgdb_hello_write" in bt
    frames = lab.gdb.checked("kmem symbolize --exact $pc")
    assert "kmemgdb_hello_poke+0x0/" in frames and "[kmemgdb_hello]" in frames
    assert "kmemgdb_hello.c:" in frames
    lab.gdb.checked("delete")
    lab.gdb.cont()
    assert poke.wait()[1] == 0
    _, status = lab.run("rmmod kmemgdb_hello")
    assert status == 0
    with Stopped(lab) as gdb:
        out = gdb.cmd("info address kmemgdb_hello_poke")
        no_python_errors(out)
        assert "No symbol" in out
        assert "modules           0: none" in gdb.checked("kmem info")


def test_kmem_symbols_loads_modules_loaded_before_attach(lab):
    lab.run("insmod /modules/kmemgdb_hello.ko")
    try:
        with Stopped(lab) as gdb:
            gdb.checked("remove-symbol-file -a kmemgdb_hello_poke")
            assert "No symbol" in gdb.cmd("info address kmemgdb_hello_poke")
            out = gdb.checked("kmem symbols")
            assert "1 module(s) loaded in the guest, symbols for 1" in out
            assert "is a function" in gdb.checked("info address kmemgdb_hello_poke")
    finally:
        lab.run("rmmod kmemgdb_hello")
