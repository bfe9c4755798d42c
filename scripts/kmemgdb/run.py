"""`kmemgdb run`: boot the guest under gdb, load modules, run commands, collect reports as JSON."""
from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gdbext.core.kmemleak_text import parse_kmemleak

from qemu.console import ConsoleError
from qemu.guest import GuestError

from .errors import KmemgdbError
from .gdbdriver import GdbError, WatchdogFired
from .guestlab import Lab, LabOptions, booted

# Everything that ends a run with exit status 2 and a one-line reason.
LAB_ERRORS = (KmemgdbError, GuestError, GdbError, ConsoleError)

KMEMLEAK_FILE = "/sys/kernel/debug/kmemleak"


@dataclass
class Step:
    kind: str          # insmod | exec
    command: str       # what the guest shell runs
    argument: str      # what the user gave (.ko path or command)


@dataclass
class KmemcheckSpec:
    """`--kmemcheck SPEC`: comma-separated cache:NAME, module:NAME, all, notrack:NAME, oneshot,
    verify, partial-ok=on|off, bitfield-ok=on|off, watchdog=SECONDS."""
    commands: list[str] = field(default_factory=list)    # gdb commands before `kmemcheck N`
    caches: list[str] = field(default_factory=list)
    mode: int = 1

    @classmethod
    def parse(cls, text: str) -> "KmemcheckSpec":
        spec = cls()
        for item in filter(None, (t.strip() for t in text.split(","))):
            kind, _, name = item.partition(":")
            key, eq, value = item.partition("=")
            if item == "all":
                spec.commands.append("kmemcheck track all")
            elif item == "oneshot":
                spec.mode = 2
            elif item == "verify":
                spec.commands.append("set kmemcheck verify on")
            elif eq and key == "watchdog" and value.isdigit():
                spec.commands.append(f"set kmemcheck watchdog {value}")
            elif kind in ("cache", "module", "notrack") and name:
                verb = "notrack cache" if kind == "notrack" else f"track {kind}"
                spec.commands.append(f"kmemcheck {verb} {name}")
                if kind == "cache":
                    spec.caches.append(name)
            elif eq and key in ("partial-ok", "bitfield-ok") and value in ("on", "off"):
                spec.commands.append(f"set kmemcheck {key} {value}")
            else:
                raise KmemgdbError(f"--kmemcheck: bad item {item!r} (use cache:NAME, module:NAME, "
                                   "all, notrack:NAME, oneshot, verify, partial-ok=on|off, "
                                   "bitfield-ok=on|off, watchdog=SECONDS)")
        if not any(c.startswith("kmemcheck track") for c in spec.commands):
            raise KmemgdbError("--kmemcheck: nothing to track (cache:NAME, module:NAME or all)")
        return spec

    def append(self) -> list[str]:
        """Kernel arguments: a 4 KiB direct map so single heap pages can be hidden, and SLUB
        user tracking of the named caches for allocation backtraces."""
        args = ["debug_pagealloc=on"]
        if self.caches:
            args.append("slub_debug=U," + ",".join(self.caches))
        return args


@dataclass
class RunOptions:
    steps: list[Step] = field(default_factory=list)
    modules: list[Path] = field(default_factory=list)
    json_path: Path | None = None
    timeout: float = 600
    reference_kmemleak: bool = False
    kmemleak: bool = False
    kmemcheck: KmemcheckSpec | None = None
    memory_mib: int = 256
    smp: int = 1
    append: list[str] = field(default_factory=list)
    workdir: Path | None = None


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise KmemgdbError(f"run timed out after {self.seconds:.0f} s (--timeout)")
        return left


def run(options: RunOptions) -> tuple[dict, int]:
    """Run the job; return the JSON document and the exit status (0 clean, 1 findings)."""
    with tempfile.TemporaryDirectory(prefix="kmemgdb-run-") as tmp:
        workdir = options.workdir or Path(tmp)
        lab_opts = LabOptions(modules=options.modules, memory_mib=options.memory_mib,
                              smp=options.smp, append=_append(options))
        deadline = Deadline(options.timeout)
        doc: dict = {"steps": [], "kmemleak": {"enabled": False, "leaks": []},
                     "kmemcheck": {"enabled": False, "reports": []}}
        if options.kmemcheck:
            doc["kmemcheck"]["enabled"] = True
        try:
            with booted(lab_opts, workdir) as lab:
                if options.kmemleak:
                    doc["kmemleak"]["baseline"] = _kmemleak_baseline(lab, deadline)
                if options.kmemcheck:
                    _kmemcheck_start(lab, options.kmemcheck, deadline)
                _run_steps(lab, options.steps, doc, deadline)
                if options.reference_kmemleak:
                    doc["reference_kmemleak"] = _reference_kmemleak(lab, deadline)
                lab.gdb.interrupt(timeout=deadline.left())
                doc["guest"] = _guest_info(lab)
                if options.kmemleak:
                    doc["kmemleak"].update(_kmemleak_report(lab, deadline))
                if options.kmemcheck:
                    doc["kmemcheck"] = _kmemcheck_report(lab, deadline)
                if options.reference_kmemleak:
                    _symbolize_reference(lab, doc["reference_kmemleak"]["leaks"])
                doc["console"] = lab.guest.console.text
                doc["shell"] = lab.guest.shell.text
                doc["hook_errors"] = _hook_errors(lab)
                if doc["hook_errors"]:
                    shown = "\n".join(e.splitlines()[0] for e in doc["hook_errors"][:5])
                    raise KmemgdbError(f"kmemgdb failed inside its hooks ({len(doc['hook_errors'])} "
                                       f"error(s)); the checks are incomplete:\n{shown}")
        except LAB_ERRORS as exc:
            for key in ("console", "shell"):
                log = workdir / f"{key}.log"
                doc[key] = log.read_text(errors="replace") if log.exists() else ""
            doc["error"] = str(exc)
            _write(options.json_path, doc)
            raise
        _write(options.json_path, doc)
        findings = len(doc["kmemleak"]["leaks"]) + len(doc["kmemcheck"]["reports"])
        return doc, 1 if findings else 0


def _append(options: RunOptions) -> list[str]:
    return ((["kmemleak=on"] if options.reference_kmemleak else [])
            + (options.kmemcheck.append() if options.kmemcheck else []) + options.append)


def _run_steps(lab: Lab, steps: list[Step], doc: dict, deadline: Deadline) -> None:
    for step in steps:
        try:
            output, status = lab.run(step.command, timeout=deadline.left())
        except WatchdogFired as exc:
            stopped = lab.gdb.await_stop(timeout=deadline.left())
            diagnosis = stopped[stopped.rfind("kmemcheck watchdog: no progress"):]
            raise KmemgdbError(f"guest {step.kind} {step.argument!r}: {exc}\n"
                               + diagnosis.strip()) from None
        except ConsoleError:
            raise KmemgdbError(f"guest {step.kind} {step.argument!r} did not finish: run timed out "
                               f"after {deadline.seconds:.0f} s (--timeout); shell tail:\n"
                               + lab.guest.shell.tail(10) + "\nconsole tail:\n"
                               + lab.guest.console.tail(10)) from None
        doc["steps"].append({"kind": step.kind, "argument": step.argument,
                             "command": step.command, "exit_status": status, "output": output})
        if status != 0:
            raise KmemgdbError(f"guest {step.kind} {step.argument!r} failed with exit status "
                               f"{status}: {output.strip()[-500:]}")


def _kmemleak_baseline(lab: Lab, deadline: Deadline) -> int:
    """Scan once the guest is up and clear what boot left behind, as kernel developers do with
    `echo clear > /sys/kernel/debug/kmemleak`: the report then holds what the steps leaked.
    The annotation hooks watched boot (where the kernel's kmemleak_not_leak/ignore calls are);
    they come off for the steps, which then run without any breakpoint near the allocator."""
    lab.gdb.interrupt(timeout=deadline.left())
    lab.gdb.checked("kmemleak scan", timeout=deadline.left())
    out = lab.gdb.checked("kmemleak clear")
    lab.gdb.checked("kmemleak hooks=off")
    lab.gdb.cont()
    m = re.search(r"(\d+) suspect", out)
    return int(m.group(1)) if m else 0


def _kmemleak_report(lab: Lab, deadline: Deadline) -> dict:
    lab.gdb.checked("kmemleak scan", timeout=deadline.left())
    report = json.loads(_last_json_line(lab.gdb.checked("kmemleak report --all --json")))
    return {"enabled": True, "leaks": report["leaks"], "suppressed": report["suppressed"],
            "objects": report["objects"], "scan_seconds": report["scan_seconds"],
            "notes": report["notes"]}


def _kmemcheck_start(lab: Lab, spec: KmemcheckSpec, deadline: Deadline) -> None:
    """Tracking starts before the steps: caches a module creates are picked up as their first
    slab is made."""
    lab.gdb.interrupt(timeout=deadline.left())
    for command in spec.commands + [f"kmemcheck {spec.mode}"]:
        out = lab.gdb.checked(command, timeout=deadline.left())
        if "kmemcheck: " not in out and out.strip():
            raise KmemgdbError(f"{command}: {out.strip()[-300:]}")
    lab.gdb.cont()


def _kmemcheck_report(lab: Lab, deadline: Deadline) -> dict:
    """Reports, then kmemcheck off and a check that no page it hid stays hidden."""
    text = lab.gdb.checked("kmemcheck report", timeout=deadline.left())
    report = json.loads(_last_json_line(lab.gdb.checked("kmemcheck report --json")))
    lab.gdb.checked("kmemcheck 0")
    hidden = lab.gdb.checked("kmem pte list")
    if not hidden.strip().startswith("0 hidden page"):
        raise KmemgdbError(f"kmemcheck left pages hidden: {hidden.strip()[:300]}")
    report["text"] = text.strip()
    return report


def _hook_errors(lab: Lab) -> list[str]:
    """What kmemgdb's hooks failed at while the guest ran: a checker that failed inside a hook
    did not check what it claims to, so the run fails (exit status 2) instead of passing."""
    return json.loads(_last_json_line(lab.gdb.checked("kmem errors --json")))


def _reference_kmemleak(lab: Lab, deadline: Deadline) -> dict:
    """The in-kernel kmemleak's report after two scans: objects must be 5 s old to be reported,
    and must stay unreferenced across two scans (mm/kmemleak.c)."""
    out, status = lab.run(f"test -w {KMEMLEAK_FILE}", timeout=deadline.left())
    if status != 0:
        raise KmemgdbError("the guest has no in-kernel kmemleak (CONFIG_DEBUG_KMEMLEAK, kmemleak=on)")
    lab.run(f"sleep 6; echo scan > {KMEMLEAK_FILE}; echo scan > {KMEMLEAK_FILE}",
            timeout=deadline.left())
    text, _ = lab.run(f"cat {KMEMLEAK_FILE}", timeout=deadline.left())
    leaks = parse_kmemleak(text)
    return {"raw": text, "leaks": [_leak_json(leak) for leak in leaks]}


def _leak_json(leak) -> dict:
    return {"address": leak.address, "size": leak.size, "comm": leak.comm, "pid": leak.pid,
            "jiffies": leak.jiffies, "age": leak.age, "hex": leak.hex.hex(),
            "backtrace": [{"pc": f.pc, "symbol": f.symbol, "module": f.module, "file": None,
                           "line": None} for f in leak.backtrace]}


def _symbolize_reference(lab: Lab, leaks: list[dict]) -> None:
    """Fill file and line of the kernel's frames from gdb's line tables, and name frames in
    module init code the kernel had already freed (its kallsyms prints a bare address)."""
    frames = [f for leak in leaks for f in leak["backtrace"] if f["pc"] is not None]
    for i in range(0, len(frames), 64):
        chunk = frames[i:i + 64]
        out = lab.gdb.checked("kmem symbolize --json " + " ".join(hex(f["pc"]) for f in chunk))
        for frame, resolved in zip(chunk, json.loads(_last_json_line(out))):
            frame["file"], frame["line"] = resolved["file"], resolved["line"]
            if frame["symbol"] is None:
                frame["symbol"], frame["module"] = resolved["symbol"], resolved["module"]


def _guest_info(lab: Lab) -> dict:
    info = json.loads(_last_json_line(lab.gdb.checked("kmem info --json")))
    return {"kernel_release": info["release"], "command_line": info["cmdline"],
            "ram_bytes": lab.guest.ram_size, "memory_total_kb": info["totalram_bytes"] // 1024,
            "smp": lab.guest.spec.smp, "modules": [m["name"] for m in info["modules"]]}


def _last_json_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith(("{", "["))]
    if not lines:
        raise KmemgdbError(f"gdb printed no JSON: {output.strip()[-500:]}")
    return lines[-1]


def _write(path: Path | None, doc: dict) -> None:
    if path:
        path.write_text(json.dumps(doc, indent=1) + "\n")
