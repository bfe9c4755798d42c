"""`kmemgdb demo`: what `make demo` runs."""
from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import KmemgdbError
from .guestlab import LabOptions, booted


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _show(lab, command: str) -> None:
    print(f"(gdb) {command}")
    print(lab.gdb.checked(command).strip("\n"), flush=True)


def demo(memory: int, smp: int, append: list[str], kernel=None) -> int:
    if kernel is not None and not kernel.sample_modules():
        raise KmemgdbError(f"demo: kernel {kernel.release} has no samples/kmemleak/kmemleak-test.ko"
                           " (CONFIG_SAMPLES=y with CONFIG_DEBUG_KMEMLEAK_TEST=m, or "
                           "CONFIG_SAMPLE_KMEMLEAK=m since 6.5)")
    options = LabOptions(memory_mib=memory, smp=smp, append=append, kernel=kernel)
    with tempfile.TemporaryDirectory(prefix="kmemgdb-demo-") as tmp, booted(options, Path(tmp)) as lab:
        lab.gdb.interrupt()
        _say("the guest, from the gdb prompt (`guest CMD` runs CMD in its shell, then stops it)")
        _show(lab, "guest uname -r; grep MemTotal /proc/meminfo")
        _say("the extension sees (guest stopped under gdb)")
        for command in ("kmem info", "kmem vtop &init_uts_ns", "kmemleak scan", "kmemleak clear"):
            _show(lab, command)
        _say("load the kernel's leaky sample module; its symbols load by themselves")
        for command in ("guest insmod /modules/kmemleak-test.ko", "info address kmemleak_test_init",
                        "kmem vtop &test_list", "kmem pte hide &test_list", "kmem pte list",
                        "kmem pte show &test_list"):
            _show(lab, command)
        _say("the guest keeps running after the page was shown again")
        _show(lab, "guest rmmod kmemleak_test && echo module unloaded")
        _say("host-side kmemleak after insmod + rmmod of the kernel's leaky sample module")
        _show(lab, "kmemleak scan")
        report = lab.gdb.checked("kmemleak").strip("\n").splitlines()
        print("(gdb) kmemleak")
        print("\n".join(report[:18] + ["  ..."] + report[-3:]), flush=True)
        _say("next: `.venv/bin/kmemgdb gdb` gives you this prompt; README.md's five-minute "
             "tutorial finds a leak and an uninitialized read in a module")
    return 0
