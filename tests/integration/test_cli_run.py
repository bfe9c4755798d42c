"""`kmemgdb run` end to end: a real guest, real gdb, JSON out, exit statuses."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def kmemgdb(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "kmemgdb.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_exec_output_lands_in_shell_log_and_json(tmp_path, hello_ko):
    report = tmp_path / "r.json"
    res = kmemgdb("run", "--insmod", hello_ko, "--exec", "echo hello-from-guest; cat /proc/modules",
                  "--exec", "uname -r", "--json", report)
    assert res.returncode == 0, res.stderr
    doc = json.loads(report.read_text())
    assert "hello-from-guest" in doc["shell"] and "hello-from-guest" not in doc["console"]
    assert "Linux version 6.1" in doc["console"]
    steps = doc["steps"]
    assert [s["kind"] for s in steps] == ["insmod", "exec", "exec"]
    assert steps[1]["exit_status"] == 0 and "kmemgdb_hello" in steps[1]["output"]
    assert steps[2]["output"].strip() == doc["guest"]["kernel_release"] == "6.1.192"
    assert doc["guest"]["ram_bytes"] == 256 << 20
    assert "console=ttyS0" in doc["guest"]["command_line"]
    assert doc["guest"]["modules"] == ["kmemgdb_hello"]
    assert doc["kmemleak"]["leaks"] == [] and doc["kmemcheck"]["reports"] == []
    assert "hello-from-guest" in res.stdout


def test_failing_guest_command_is_exit_2(tmp_path):
    report = tmp_path / "r.json"
    res = kmemgdb("run", "--exec", "echo before", "--exec", "exit_with() { return 7; }; exit_with",
                  "--exec", "echo never", "--json", report)
    assert res.returncode == 2
    assert "exit status 7" in res.stderr and "Traceback" not in res.stderr
    doc = json.loads(report.read_text())
    assert [s["exit_status"] for s in doc["steps"]] == [0, 7]
    assert "error" in doc


def test_kernel_oops_is_a_finding_and_the_run_goes_on_to_its_reports(tmp_path, hello_ko):
    """The oops kills the shell that ran the step (echo is a builtin): the guest is stopped,
    not gone, so the run still collects its reports, and exits 1 with the oops among them."""
    report = tmp_path / "r.json"
    res = kmemgdb("run", "--kmemleak", "--insmod", hello_ko, "--exec",
                  "echo 1 > /sys/kernel/debug/kmemgdb_hello_bug", "--exec", "echo never", "--json", report)
    assert res.returncode == 1, res.stderr
    assert "crashed the guest kernel: kernel BUG at" in res.stderr and "Traceback" not in res.stderr
    doc = json.loads(report.read_text())
    assert [s["exit_status"] for s in doc["steps"]] == [0, None]
    [oops] = doc["kernel_reports"]
    assert oops["kind"] == "bug" and oops["title"].startswith("kernel BUG at")
    assert "kmemgdb_hello_bug_write" in oops["text"] and doc["kmemleak"]["objects"] > 10000
    assert "kernel bug report" in res.stdout


def test_timeout_is_exit_2():
    res = kmemgdb("run", "--exec", "sleep 100", "--timeout", "8")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "run timed out after 8 s" in res.stderr   # during boot or during the step


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_qemu_dying_mid_run_is_exit_2():
    proc = subprocess.Popen([sys.executable, "-m", "kmemgdb.cli", "run", "--exec", "sleep 60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        qemu = None
        deadline = time.monotonic() + 120
        while qemu is None and time.monotonic() < deadline:
            for child in _children(proc.pid):
                if Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"qemu-system"):
                    qemu = child
            time.sleep(0.2)
        assert qemu, "QEMU never started"
        time.sleep(4)                   # let the guest boot and start the command
        os.kill(qemu, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2
    assert "QEMU exited" in err and "Traceback" not in err


@pytest.mark.parametrize("extra", [["--smp", "2", "--memory", "384"]])
def test_guest_size_options(extra, tmp_path):
    report = tmp_path / "r.json"
    res = kmemgdb("run", *extra, "--exec", "grep -c ^processor /proc/cpuinfo", "--json", report)
    assert res.returncode == 0, res.stderr
    doc = json.loads(report.read_text())
    assert doc["steps"][0]["output"].strip() == "2"
    assert doc["guest"]["ram_bytes"] == 384 << 20 and doc["guest"]["smp"] == 2


def test_reference_kmemleak_report_is_captured(tmp_path):
    """The in-kernel kmemleak (kmemleak=on) on the kernel's own leaky sample module."""
    report = tmp_path / "r.json"
    res = kmemgdb("run", "--reference-kmemleak", "--insmod", "kmemleak-test", "--json", report)
    assert res.returncode == 0, res.stderr      # reference findings are not our findings
    doc = json.loads(report.read_text())
    assert "kmemleak=on" in doc["guest"]["command_line"]
    leaks = doc["reference_kmemleak"]["leaks"]
    sizes = sorted(leak["size"] for leak in leaks)
    # kmemleak-test leaks 2x32, 2x1024, 2x2048, 2x4096 and five vmalloc(64) (4096 each); a
    # conservative scan may still find stale pointers to some of them (seen: 4 of the 5
    # vmalloc areas in one run), so only a floor is checked here.
    for size, count in ((32, 1), (1024, 1), (2048, 1), (4096, 3)):
        assert sizes.count(size) >= count, sizes
    assert len(leaks) >= 8, sizes
    frames = [f for leak in leaks for f in leak["backtrace"]]
    assert all(set(f) == {"pc", "symbol", "module", "file", "line"} for f in frames)
    test_frames = [f for f in frames if f["symbol"].startswith("kmemleak_test_init+")]
    assert test_frames and all(f["module"] == "kmemleak_test" for f in test_frames)
    assert all(f["file"] and f["line"] for f in test_frames)


def _site(frames: list[dict]) -> str | None:
    """The allocation site: the first frame outside the allocator, without its offset."""
    for f in frames:
        name = (f["symbol"] or "").split("+")[0]
        if name and not name.startswith(("kmalloc", "__kmalloc", "__vmalloc", "vmalloc", "kmem_cache")):
            return f["symbol"]
    return None


def test_kmemleak_against_the_in_kernel_kmemleak_object_by_object(tmp_path):
    """Same run, same objects: host-side kmemleak (with slub_debug=U backtraces) next to the
    kernel's kmemleak=on. Differences are printed; the sample's leaks must agree."""
    report = tmp_path / "r.json"
    res = kmemgdb("run", "--kmemleak", "--reference-kmemleak", "--append", "slub_debug=U,kmalloc-*",
                  "--insmod", "kmemleak-test", "--json", report)
    assert res.returncode == 1, res.stderr           # findings
    doc = json.loads(report.read_text())
    ours = {l["address"]: l for l in doc["kmemleak"]["leaks"]}
    kernel = {l["address"]: l for l in doc["reference_kmemleak"]["leaks"]}
    printed = {int(a, 16): what for what, a in
               __import__("re").findall(r"kmemleak: (k\w+\([^)]*\)+|vmalloc\(64\)) = ([0-9a-f]+)", doc["console"])}
    sample = {a for a, what in printed.items()
              if what.startswith(("kmalloc(32", "kmalloc(1024", "kmalloc(2048", "kmalloc(4096", "vmalloc"))}
    print("\nkernel only:", {hex(a): (l["size"], _site(l["backtrace"])) for a, l in kernel.items() if a not in ours})
    print("host only:", {hex(a): (l["size"], l["cache"], _site(l["backtrace"])) for a, l in ours.items() if a not in kernel})
    assert sample <= set(ours), {hex(a) for a in sample - set(ours)}
    for addr in sample & set(kernel):
        assert ours[addr]["size"] == kernel[addr]["size"], hex(addr)
        assert _site(ours[addr]["backtrace"]).split("+")[0] == "kmemleak_test_init"
        assert _site(kernel[addr]["backtrace"]).split("+")[0] == "kmemleak_test_init"
    tracked = [ours[a] for a in sample if ours[a]["object_kind"] == "slab"]
    assert len(tracked) == 8 and all(l["pid"] and l["jiffies"] for l in tracked)
    assert all(any(f["module"] == "kmemleak_test" for f in l["backtrace"]) for l in tracked)
    # What the kernel reports of the sample, the host reports too (it may report more: the
    # kernel's scan can keep an object alive through a stale pointer).
    assert {a for a in kernel if a in printed and printed[a] != "kmalloc(129)"} <= set(ours)


def test_kmemleak_run_of_a_clean_module_is_exit_0(tmp_path, hello_ko):
    report = tmp_path / "r.json"
    res = kmemgdb("run", "--kmemleak", "--insmod", hello_ko, "--exec", "echo 1 > /sys/kernel/debug/kmemgdb_hello",
                  "--exec", "rmmod kmemgdb_hello", "--exec", "ls -R /sys > /dev/null", "--json", report)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(report.read_text())
    assert doc["kmemleak"]["enabled"] and doc["kmemleak"]["leaks"] == []
    assert doc["kmemleak"]["objects"] > 10000 and doc["kmemleak"]["scan_seconds"] < 5
    assert "0 direct leak(s)" in res.stdout
