"""The command layer: one argparse parser per command, one error path, precondition guards."""
from __future__ import annotations

import argparse
import shlex

import gdb

from ...core.kernel import KernelModelError
from ...core.kmemcheck import KmemcheckError
from ...core.memory import MemoryError_
from ...core.paging import PagingError
from ...core.symbols import SymbolError
from .. import target

# Failures of the core that mean "the user asked for something the guest cannot give".
USER_ERRORS = (KernelModelError, KmemcheckError, MemoryError_, PagingError, SymbolError, ValueError)


class ArgumentError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so gdb shows one line."""

    def error(self, message: str):
        raise ArgumentError(f"{self.prog}: {message} (usage: {self.format_usage().strip()[7:]})")

    def exit(self, status: int = 0, message: str | None = None):
        raise ArgumentError(message.strip() if message else f"{self.prog}: bad arguments")


def parser(prog: str, description: str) -> Parser:
    return Parser(prog=prog, description=description, add_help=False)


def address(text: str) -> int:
    """An address argument: a number or any gdb expression (`&init_task`, `$rsp+8`)."""
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        value = gdb.parse_and_eval(text)
    except gdb.error as exc:
        raise argparse.ArgumentTypeError(f"cannot evaluate {text!r}: {exc}")
    if value.type.strip_typedefs().code == gdb.TYPE_CODE_ARRAY:
        value = value.address
    return int(value.cast(gdb.lookup_type("unsigned long")))


class KmemCommand(gdb.Command):
    """Base: parse with self.PARSER, call self.run(args); errors become one-line GdbErrors."""
    PARSER: Parser | None = None
    NEEDS_STOPPED_GUEST = True

    def __init__(self, name: str, prefix: bool = False):
        super().__init__(name, gdb.COMMAND_DATA, gdb.COMPLETE_EXPRESSION, prefix)
        self.cmd_name = name

    def invoke(self, argument: str, from_tty: bool) -> None:
        try:
            argv = shlex.split(argument)
            args = self.PARSER.parse_args(argv) if self.PARSER else argv
            if self.NEEDS_STOPPED_GUEST:
                require_stopped_guest(self.cmd_name)
            self.run(args)
        except ArgumentError as exc:
            raise gdb.GdbError(str(exc)) from None
        except (gdb.error, *USER_ERRORS) as exc:
            raise gdb.GdbError(f"{self.cmd_name}: {exc}") from None
        except KeyboardInterrupt:
            raise gdb.GdbError(f"{self.cmd_name}: interrupted") from None

    def run(self, args) -> None:
        raise NotImplementedError


def require_stopped_guest(what: str) -> None:
    if not target.connected():
        raise gdb.GdbError(f"{what}: no guest: connect first with `target remote HOST:PORT` "
                           "(QEMU started with -gdb or -s)")
    if not target.stopped():
        raise gdb.GdbError(f"{what}: the guest is running: interrupt it first (Ctrl-C or `interrupt`)")
