"""`--kernel DIR`: a kernel the user built, its config checked before anything boots."""
import json
import shutil
import subprocess
import sys

import pytest

from .conftest import REPO, MYDRIVER_SRC


def kmemgdb(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "kmemgdb.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture
def stock_like(kernel_build, tmp_path):
    """A build directory whose config says what a distribution kernel's says: no
    debug_pagealloc, no kmemleak (the binaries are ours: only the check reads the config)."""
    tree = tmp_path / "linux"
    (tree / "arch/x86/boot").mkdir(parents=True)
    (tree / "include/config").mkdir(parents=True)
    for name in ("vmlinux", "arch/x86/boot/bzImage", "include/config/kernel.release"):
        (tree / name).symlink_to(kernel_build.build_dir / name)
    config = (kernel_build.build_dir / ".config").read_text()
    for option in ("CONFIG_DEBUG_PAGEALLOC", "CONFIG_DEBUG_KMEMLEAK"):
        config = config.replace(f"{option}=y", f"# {option} is not set")
    (tree / ".config").write_text(config)
    return tree


def test_run_on_a_kernel_directory(kernel_build, tmp_path):
    """Our own cache directory given as a user's build: everything works from it."""
    report = tmp_path / "r.json"
    res = kmemgdb("run", "--kernel", kernel_build.build_dir, "--kmemleak", "--insmod",
                  "kmemleak-test", "--exec", "uname -r", "--json", report)
    assert res.returncode == 1, res.stderr                  # kmemleak-test leaks
    doc = json.loads(report.read_text())
    assert doc["steps"][1]["output"].strip() == kernel_build.release
    assert len(doc["kmemleak"]["leaks"]) >= 10
    assert "kmemgdb: kernel" not in res.stderr              # nothing is off


def test_missing_options_are_listed_before_booting(stock_like):
    res = kmemgdb("run", "--kernel", stock_like, "--kmemleak", "--kmemcheck", "cache:kmalloc-64",
                  "--reference-kmemleak", "--exec", "true", timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "cannot do this run" in res.stderr
    assert "--kmemcheck needs CONFIG_DEBUG_PAGEALLOC=y" in res.stderr
    assert "--reference-kmemleak needs CONFIG_DEBUG_KMEMLEAK=y" in res.stderr
    assert "console.log" not in res.stderr                 # nothing booted


def test_what_a_kernel_cannot_do_is_said_once_and_the_rest_runs(stock_like):
    res = kmemgdb("run", "--kernel", stock_like, "--kmemleak", "--exec", "uname -r")
    assert res.returncode == 0, res.stderr
    assert "off: kmemcheck (a 4 KiB direct map: debug_pagealloc=on): needs CONFIG_DEBUG_PAGEALLOC=y" in res.stderr
    assert "off: kmemleak annotations" in res.stderr


def test_module_build_against_a_kernel_directory(kernel_build):
    res = kmemgdb("module", "build", "--kernel", kernel_build.build_dir, MYDRIVER_SRC)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("mydriver.ko")


@pytest.mark.parametrize("make_bad, error", [
    (lambda d: shutil.rmtree(d / "arch"), "no arch/x86/boot/bzImage there"),
    (lambda d: (d / ".config").write_text("CONFIG_64BIT=y\n"), "missing, needed by every run"),
])
def test_unusable_kernel_directories(stock_like, make_bad, error):
    make_bad(stock_like)
    res = kmemgdb("run", "--kernel", stock_like, "--exec", "true", timeout=60)
    assert res.returncode == 2 and error in res.stderr and "Traceback" not in res.stderr
