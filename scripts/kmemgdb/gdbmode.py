"""`kmemgdb gdb`: a fresh guest with gdb attached, as a prompt or running a batch script.

Either way the guest is stopped at the first prompt, gdb has the extension loaded and the
guest's shell at hand (`guest CMD`; `kmemgdb shell` from another terminal). `-x FILE` and
`-ex CMD` run in the order given, as gdb's own options do; `--batch` then ends with an exit
status a CI job can use instead of handing over the prompt.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .errors import KmemgdbError
from .gdbdriver import GdbError, GdbSession
from .guestlab import LabOptions, booted
from .run import last_json_line

BATCH_ERROR = "kmemgdb-batch-error: "
# Runs one batch item inside gdb (one line: a `python ... end` block would echo `>` prompts):
# a failing command becomes one marked line, as a sourced script stops at its first error.
_STEP = ("try:\n    gdb.execute({command!r}, from_tty=False)\n"
         "except (gdb.error, KeyboardInterrupt) as exc:\n"
         "    gdb.write({mark!r} + str(exc).replace(chr(10), ' ') + chr(10))\n")


@dataclass
class ScriptItem:
    kind: str            # "x" (a file to source) or "ex" (one command)
    value: str

    def command(self) -> str:
        return f"source {Path(self.value).resolve()}" if self.kind == "x" else self.value


@dataclass
class GdbOptions:
    lab: LabOptions
    items: list[ScriptItem] = field(default_factory=list)
    batch: bool = False
    timeout: float = 600
    backtraces: bool = True      # booted with SLUB user tracking: turn on `kmemleak module-caches`


def _ready(lab, options: GdbOptions) -> None:
    """The guest stopped at its shell, as the first prompt finds it."""
    lab.gdb.interrupt()
    if options.backtraces:
        lab.gdb.checked("kmemleak module-caches=on")


def check_items(items: list[ScriptItem]) -> None:
    for item in items:
        if item.kind == "x" and not Path(item.value).is_file():
            raise KmemgdbError(f"-x {item.value}: no such file")


def interactive(options: GdbOptions) -> int:
    check_items(options.items)
    with tempfile.TemporaryDirectory(prefix="kmemgdb-gdb-") as tmp, \
            booted(options.lab, Path(tmp)) as lab:
        _ready(lab, options)
        print(f"guest booted and stopped; console log: {lab.guest.console.log_path}\n"
              "  guest CMD          run CMD in the guest's shell, checkers armed (`help guest`)\n"
              f"  kmemgdb shell      the same shell on another terminal (session {os.getpid()};"
              " the guest runs while gdb lets it: `continue`)\n"
              "  help kmem, help kmemleak, help kmemcheck;  quit (or Ctrl-]) ends, guest too",
              flush=True)
        for item in options.items:
            status = _step(lab.gdb, item, _write, options.timeout)
            if status is not None:
                print(f"kmemgdb: {status}", file=sys.stderr)
        lab.gdb.hand_over()
        lab.gdb.proc.logfile_read = None     # interact() passes bytes; the log takes text
        # interact() makes the terminal raw with TCSAFLUSH, dropping what was typed before:
        # gdb prints its prompt after interact() started (`echo` with nothing prints nothing).
        threading.Timer(0.5, lambda: lab.gdb.send("echo")).start()
        lab.gdb.proc.interact()
    return 0


def batch(options: GdbOptions) -> int:
    """Run the items against a fresh guest. Exit status: 0 clean, 1 findings (leaks in the
    current `kmemleak` report, kmemcheck reports), 2 an error (a command failed, an error in
    kmemgdb's hooks), or N when the script ended gdb with `quit N`."""
    check_items(options.items)
    with tempfile.TemporaryDirectory(prefix="kmemgdb-gdb-") as tmp, \
            booted(options.lab, Path(tmp)) as lab:
        _ready(lab, options)
        for item in options.items:
            try:
                failure = _step(lab.gdb, item, _write, options.timeout)
            except GdbError:
                if lab.gdb.proc.isalive():
                    raise
                lab.gdb.proc.wait()
                return lab.gdb.proc.exitstatus or 0       # the script's own `quit N`
            if failure is not None:
                print(f"kmemgdb: {failure}", file=sys.stderr)
                return 2
        return _verdict(lab.gdb)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _step(gdb: GdbSession, item: ScriptItem, write, timeout: float) -> str | None:
    """Run ITEM, streaming its output; the error message when it failed."""
    command = item.command()
    code = _STEP.format(command=command, mark=BATCH_ERROR)
    out = gdb.stream(f"python exec({code!r})", write, timeout)
    for line in out.splitlines():
        if line.startswith(BATCH_ERROR):
            where = f"-x {item.value}" if item.kind == "x" else f"-ex {item.value!r}"
            return f"{where}: {line[len(BATCH_ERROR):]}"
    return None


def _verdict(gdb: GdbSession) -> int:
    errors = _json(gdb, "kmem errors --json")
    if errors:
        print(f"kmemgdb: {len(errors)} error(s) inside kmemgdb's hooks (`kmem errors`): "
              f"{errors[0]}", file=sys.stderr)
        return 2
    leaks = _json(gdb, "kmemleak report --json", missing={"leaks": []})["leaks"]
    direct = sum(1 for leak in leaks if leak["kind"] == "direct")
    reports = _json(gdb, "kmemcheck report --json")["reports"]
    if direct or reports:
        print(f"kmemgdb: findings: {direct} leak(s) in the kmemleak report, "
              f"{len(reports)} kmemcheck report(s)", file=sys.stderr)
        return 1
    return 0


def _json(gdb: GdbSession, command: str, missing=None):
    """COMMAND's JSON; MISSING when it printed none and that is an answer (`kmemleak: no scan
    yet`: nothing to report)."""
    try:
        return json.loads(last_json_line(gdb.cmd(command)))
    except KmemgdbError:
        if missing is None:
            raise
        return missing
