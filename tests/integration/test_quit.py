"""Quitting gdb with pages hidden leaves the guest whole: the pages are shown again."""
from kmemgdb.guestlab import LabOptions, booted

from .test_kmem import _pte_present


def test_quit_shows_hidden_pages_again(hello_ko, tmp_path):
    with booted(LabOptions(modules=[hello_ko]), tmp_path) as lab:
        lab.run("insmod /modules/kmemgdb_hello.ko")
        lab.gdb.interrupt()
        addr = int(lab.gdb.checked("p/x &kmemgdb_hello_counter").split("=")[1], 16)
        cr3 = int(lab.gdb.checked("p/x (unsigned long)$cr3").split("=")[1], 16)
        lab.gdb.checked(f"kmem pte hide {addr:#x}")
        assert not _pte_present(lab, cr3, addr)
        lab.gdb.send("quit")
        lab.gdb.expect(r"shown again")
        lab.gdb.proc.wait()
        assert _pte_present(lab, cr3, addr)
