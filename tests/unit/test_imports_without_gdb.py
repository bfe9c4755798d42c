"""The core, the launcher and the host tooling must import in a Python that has no gdb module."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Every module of the core (found, not listed: a new one cannot be forgotten), plus the launcher
# and the host tooling.
CORE_MODULES = sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for p in (REPO / "gdbext" / "core").rglob("*.py"))
PURE_MODULES = CORE_MODULES + [
    "qemu.argv", "qemu.console", "qemu.guest",
    "kmemgdb.cli", "kmemgdb.run", "kmemgdb.bench", "kmemgdb.kernel", "kmemgdb.initramfs", "kmemgdb.modbuild",
]

BLOCK_GDB = """
import sys
class BlockGdb:
    def find_spec(self, name, path=None, target=None):
        if name == "gdb" or name.startswith("gdb."):
            raise ImportError("gdb must not be imported here")
sys.meta_path.insert(0, BlockGdb())
"""


def test_pure_modules_import_without_gdb():
    code = BLOCK_GDB + "".join(f"import {m}\n" for m in PURE_MODULES) + "print('ok')"
    env_path = f"{REPO}:{REPO / 'scripts'}"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_blocker_really_blocks():
    """The check above must be able to fail: the glue does import gdb."""
    code = BLOCK_GDB + "import gdbext.gdb.target\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode != 0 and "gdb must not be imported" in res.stderr


def test_only_the_glue_mentions_import_gdb():
    offenders = []
    for path in list((REPO / "gdbext").rglob("*.py")) + list((REPO / "qemu").rglob("*.py")) \
            + list((REPO / "scripts").rglob("*.py")):
        if "gdbext/gdb" in path.as_posix() or path.name == "init.py" and path.parent.name == "gdbext":
            continue
        text = path.read_text()
        if "import gdb\n" in text or "from gdb " in text:
            offenders.append(str(path))
    assert offenders == []
