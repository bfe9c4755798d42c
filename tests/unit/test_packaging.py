"""What a user installs: every package of the tree is in the wheel, and the `guest` marker
selects exactly the integration tests."""
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"gdbext": REPO / "gdbext", "qemu": REPO / "qemu", "kmemgdb": REPO / "scripts" / "kmemgdb"}


def tree_packages() -> set[str]:
    found = set()
    for name, root in ROOTS.items():
        for init in root.rglob("__init__.py"):
            found.add(".".join([name, *init.parent.relative_to(root).parts]))
    return found


def test_wheel_holds_every_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, capture_output=True,
                   timeout=300, cwd=tmp_path)
    [wheel] = tmp_path.glob("kmemgdb-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packaged = {n[:-len("/__init__.py")].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packaged == tree_packages()
    assert "gdbext/core/heap/slub.py" in names and "gdbext/gdb/kmemcheck/faults.py" in names


def test_guest_marker_selects_the_integration_tests():
    def collected(*args):
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *args],
                             capture_output=True, text=True, cwd=REPO, timeout=120).stdout
        return [line for line in out.splitlines() if "::" in line]
    guest = collected("-m", "guest", "tests/integration")
    assert guest and all(line.startswith("tests/integration/") for line in guest)
    assert collected("-m", "not guest", "tests/integration") == []
    assert collected("-m", "not guest", "tests/unit")
