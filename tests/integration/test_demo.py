"""`make demo`: the first thing a newcomer runs."""
import re
import subprocess
import sys

from .conftest import REPO


def test_demo_shows_the_guest_the_extension_and_a_leak_report():
    res = subprocess.run([sys.executable, "-m", "kmemgdb.cli", "demo"], capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    out = res.stdout
    assert "Traceback" not in out + res.stderr and "Program received signal" not in out
    assert re.search(r"\(gdb\) guest uname -r; grep MemTotal /proc/meminfo\n6\.\d+\.\d+\nMemTotal:", out)
    assert re.search(r"Symbol \"kmemleak_test_init\" is a function at address 0x", out)
    assert "module unloaded" in out
    assert re.search(r"unreferenced object 0x[0-9a-f]+ \(size \d+\):", out)
