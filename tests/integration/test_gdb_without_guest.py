"""gdb with the extension but no guest: commands say what to do, never a traceback."""
import pytest

from kmemgdb.gdbdriver import GdbSession

from .conftest import no_python_errors


@pytest.fixture(scope="module")
def lone_gdb(kernel_build, tmp_path_factory):
    with GdbSession(kernel_build.vmlinux, log_path=tmp_path_factory.mktemp("gdb") / "gdb.log") as gdb:
        yield gdb


@pytest.mark.parametrize("command", ["kmem info", "kmem vtop 0xffffffff81000000",
                                     "kmem pte hide 0xffffffff81000000", "kmem symbols"])
def test_commands_need_a_guest(lone_gdb, command):
    out = lone_gdb.cmd(command)
    no_python_errors(out)
    assert "no guest: connect first with `target remote" in out
    assert len(out.strip().splitlines()) == 1


def test_show_all_and_help_work_without_a_guest(lone_gdb):
    assert "0 hidden page(s)" in lone_gdb.checked("kmem pte list")
    assert "kmem vtop" in lone_gdb.checked("help kmem")
    no_python_errors(lone_gdb.cmd("kmem pte show-all"))


def test_missing_ram_file_is_a_clear_error(lone_gdb):
    out = lone_gdb.cmd("set kmemgdb ram-file /nonexistent/ram")
    no_python_errors(out)
    assert "ram-file" in lone_gdb.checked("show kmemgdb ram-file")
