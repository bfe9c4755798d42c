"""The command layer: one argparse parser per command or verb, from which gdb's help and tab
completion are generated; one error path; precondition guards."""
from __future__ import annotations

import argparse
import shlex

import gdb

from ...core import completion
from ...core.completion import Native
from ...core.kernel import KernelModelError
from ...core.kmemcheck import KmemcheckError
from ...core.memory import MemoryError_
from ...core.paging import PagingError
from ...core.symbols import SymbolError
from .. import target

# Failures of the core that mean "the user asked for something the guest cannot give".
USER_ERRORS = (KernelModelError, KmemcheckError, MemoryError_, PagingError, SymbolError, ValueError)

HELP_WIDTH = 100        # help is generated once, at registration: not the terminal's width
NATIVE = {Native.EXPRESSION: gdb.COMPLETE_EXPRESSION}


class ArgumentError(Exception):
    pass


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, width=HELP_WIDTH)


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so gdb shows one line. SUMMARY is the line gdb
    lists the command with; DETAILS follow the usage in its full help."""

    def __init__(self, prog: str, summary: str, details: str = ""):
        super().__init__(prog=prog, description=details or None, add_help=False,
                         formatter_class=_formatter)
        self.summary = summary

    def add_argument(self, *names, complete=None, **kwargs):
        """COMPLETE: what the argument completes to (see core.completion); by default what its
        type completes to."""
        action = super().add_argument(*names, **kwargs)
        action.completer = complete or TYPE_COMPLETIONS.get(kwargs.get("type"))
        return action

    def error(self, message: str):
        raise ArgumentError(f"{self.prog}: {message} (usage: {self.usage_line()})")

    def exit(self, status: int = 0, message: str | None = None):
        raise ArgumentError(message.strip() if message else f"{self.prog}: bad arguments")

    def usage_line(self) -> str:
        return self.format_usage().strip().removeprefix("usage: ")

    def full_help(self) -> str:
        """The summary, then argparse's usage, details and arguments: gdb's help of a command."""
        return f"{self.summary}\nUsage: {self.format_help().strip().removeprefix('usage: ')}"


def parser(prog: str, summary: str, details: str = "") -> Parser:
    return Parser(prog, summary, details)


def verb_lines(rows: list[tuple[str, str]]) -> str:
    """One line per command or verb: its usage, then its summary (on a line of its own after a
    long usage)."""
    width = min(max(len(usage) for usage, _ in rows), 30)
    return "\n".join(f"{usage:<{width}}  {summary}" if len(usage) <= width
                     else f"{usage}\n{'':<{width}}  {summary}" for usage, summary in rows)


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


def on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError("expected on or off")
    return text == "on"


ADDRESS_HELP = "a number or gdb expression (`&init_uts_ns`, `$rsp+8`)"
TYPE_COMPLETIONS = {address: Native.EXPRESSION, on_off: ("on", "off")}


class KmemCommand(gdb.Command):
    """Base: parse with self.PARSER, call self.run(args); errors become one-line GdbErrors.
    With a PARSER, gdb's help and the completion of arguments come from it."""
    PARSER: Parser | None = None
    NEEDS_STOPPED_GUEST = True

    def __init__(self, name: str, prefix: bool = False):
        if self.PARSER:
            self.__doc__ = self.PARSER.full_help()      # gdb reads it in __init__
        super().__init__(name, gdb.COMMAND_DATA, prefix=prefix)   # completion: complete()
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

    def complete(self, text: str, word: str | None):
        try:
            done, partial = completion.split(text)
            found = completion.trimmed(self.completions(done, partial), done, partial, word)
        except Exception:  # a completer must not raise: gdb would print the error mid-line
            return []
        return NATIVE[found] if isinstance(found, Native) else found

    def completions(self, done: list[str], partial: str) -> completion.Completion:
        return completion.arguments(self.PARSER, done, partial) if self.PARSER else []


def verb(verb_parser: Parser):
    """Declare a VerbCommand method as the verb its parser's prog ends with."""
    def declare(method):
        method.verb_parser = verb_parser
        return method
    return declare


class VerbCommand(KmemCommand):
    """A command whose first word is a verb (`kmemleak scan`), each a method declared with
    @verb(parser) and called with the parsed arguments. gdb's help, `NAME help [VERB]` and
    completion come from those parsers; `VERB=VALUE` is `VERB VALUE`, the kernel's debugfs form."""
    SUMMARY = ""
    NOTES = ""              # help text after the list of verbs
    DEFAULT_VERB = ""       # what the command alone runs
    NEEDS_STOPPED_GUEST = False

    def __init__(self, name: str):
        self.handlers = {m.verb_parser.prog.split()[-1]: m for m in vars(type(self)).values()
                         if hasattr(m, "verb_parser")}
        self.parsers = {verb_: m.verb_parser for verb_, m in self.handlers.items()}
        help_parser = parser(f"{name} help", f"List the verbs of {name}, or show VERB's arguments.")
        help_parser.add_argument("verb", nargs="?", metavar="VERB", complete=tuple(self.parsers),
                                 help=f"a verb of {name}")
        self.parsers["help"], self.handlers["help"] = help_parser, VerbCommand.help
        self.__doc__ = self.listing()
        super().__init__(name)

    def listing(self) -> str:
        rows = [(p.usage_line(), p.summary) for p in self.parsers.values()]
        return "\n".join([self.SUMMARY, "", verb_lines(rows), "", self.NOTES]).strip()

    def run(self, argv: list[str]) -> None:
        first = (argv or [self.DEFAULT_VERB])[0]
        name, _, value = first.partition("=")
        if name not in self.parsers:
            raise gdb.GdbError(f"{self.cmd_name}: unknown command {first!r} "
                               f"(see `{self.cmd_name} help`)")
        args = ([value] if value else []) + argv[1:]
        self.handlers[name](self, self.parsers[name].parse_args(args))

    def help(self, opts) -> None:
        if opts.verb is None:
            gdb.write(self.listing() + "\n")
        elif opts.verb in self.parsers:
            gdb.write(self.parsers[opts.verb].full_help() + "\n")
        else:
            raise gdb.GdbError(f"{self.cmd_name} help: unknown verb {opts.verb!r} "
                               f"(see `{self.cmd_name} help`)")

    def completions(self, done: list[str], partial: str) -> completion.Completion:
        return completion.verbs(self.parsers, done, partial)


def require_stopped_guest(what: str) -> None:
    if not target.connected():
        raise gdb.GdbError(f"{what}: no guest: connect first with `target remote HOST:PORT` "
                           "(QEMU started with -gdb or -s)")
    if not target.stopped():
        raise gdb.GdbError(f"{what}: the guest is running: interrupt it first (Ctrl-C or `interrupt`)")
