"""`kmemgdb run`: boot the guest under gdb, load modules, run commands, collect reports as JSON."""
from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gdbext.core.kernelreports import parse_kernel_reports
from gdbext.core.kmemleak_text import parse_kmemleak

from qemu.console import ConsoleError
from qemu.guest import GuestError

from .errors import KmemgdbError
from .gdbdriver import GdbError, WatchdogFired
from .guestlab import Lab, LabOptions, booted
from .kernel import KernelBuild

# Everything that ends a run with exit status 2 and a one-line reason.
LAB_ERRORS = (KmemgdbError, GuestError, GdbError, ConsoleError)

KMEMLEAK_FILE = "/sys/kernel/debug/kmemleak"


@dataclass
class Step:
    kind: str          # insmod | exec
    command: str       # what the guest shell runs
    argument: str      # what the user gave (.ko path or command)
    params: str = ""   # insmod: module parameters


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
    backtraces: bool = True        # SLUB user tracking on every cache (slub_debug=U)
    fail_alloc: tuple[str, int] | None = None   # (module, N): its Nth allocation fails
    memory_mib: int = 256
    smp: int = 1
    append: list[str] = field(default_factory=list)
    workdir: Path | None = None
    kernel: KernelBuild | None = None      # --kernel DIR; None: ours


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
                              smp=options.smp, append=kernel_arguments(options),
                              kernel=options.kernel)
        deadline = Deadline(options.timeout)
        doc: dict = {"steps": [], "kmemleak": {"enabled": False, "leaks": [], "heap_findings": []},
                     "kmemcheck": {"enabled": False, "reports": []}, "kernel_reports": []}
        if options.kmemcheck:
            doc["kmemcheck"]["enabled"] = True
        failure = None
        try:
            with booted(lab_opts, workdir) as lab:
                if options.kmemleak:
                    doc["kmemleak"]["baseline"] = _kmemleak_baseline(lab, deadline, options.backtraces)
                if options.kmemcheck:
                    _kmemcheck_start(lab, options.kmemcheck, deadline)
                if options.fail_alloc:
                    _fail_alloc_start(lab, *options.fail_alloc, deadline)
                since = len(lab.guest.console.text)
                failure = _run_steps(lab, options.steps, doc, deadline)
                if options.reference_kmemleak and failure is None:
                    doc["reference_kmemleak"] = _reference_kmemleak(lab, deadline)
                lab.gdb.interrupt(timeout=deadline.left())
                _collect(lab, options, doc, deadline)
                doc["kernel_reports"] = [r.to_json() for r in
                                         parse_kernel_reports(lab.guest.console.text[since:])]
        except LAB_ERRORS as exc:
            for key in ("console", "shell"):
                log = workdir / f"{key}.log"
                doc[key] = log.read_text(errors="replace") if log.exists() else ""
            doc["error"] = str(exc)
            _write(options.json_path, doc)
            raise
        if failure is not None:
            doc["step_failure"] = failure
        if failure is not None and not doc["kernel_reports"] and not options.fail_alloc:
            doc["error"] = failure
            _write(options.json_path, doc)
            raise KmemgdbError(failure)
        _write(options.json_path, doc)
        findings = (len(doc["kmemleak"]["leaks"]) + len(doc["kmemleak"]["heap_findings"])
                    + len(doc["kmemcheck"]["reports"]) + len(doc["kernel_reports"]))
        return doc, 1 if findings else 0


def _collect(lab: Lab, options: RunOptions, doc: dict, deadline: Deadline) -> None:
    """Everything the checkers and the guest have to say, with the guest stopped."""
    doc["guest"] = _guest_info(lab)
    if options.fail_alloc:
        doc["fail_alloc"] = json.loads(last_json_line(lab.gdb.checked("kmem fail-alloc --json")))
    if options.kmemleak:
        doc["kmemleak"].update(_kmemleak_report(lab, deadline))
    if options.kmemcheck:
        doc["kmemcheck"] = _kmemcheck_report(lab, deadline)
    if "reference_kmemleak" in doc:
        _symbolize_reference(lab, doc["reference_kmemleak"]["leaks"])
    doc["console"] = lab.guest.console.text
    doc["shell"] = lab.guest.shell.text
    doc["hook_errors"] = _hook_errors(lab)
    if doc["hook_errors"]:
        shown = "\n".join(e.splitlines()[0] for e in doc["hook_errors"][:5])
        raise KmemgdbError(f"kmemgdb failed inside its hooks ({len(doc['hook_errors'])} "
                           f"error(s)); the checks are incomplete:\n{shown}")


def kernel_arguments(options: RunOptions) -> list[str]:
    """The guest's command line additions: the reference kmemleak, kmemcheck's, and for leak
    backtraces SLUB user tracking on the kmalloc caches (the caches modules create get it
    from the host: `kmemleak module-caches=on`) and page_owner (large kmallocs, vmalloc). A
    slub_debug= the user gave is kept, with U added to its first flag group."""
    args = ["kmemleak=on"] if options.reference_kmemleak else []
    user = list(options.append)
    backtraces = options.kmemleak and options.backtraces
    tracked = ["kmalloc-*"] if backtraces else []
    if options.kmemcheck:
        args += [a for a in options.kmemcheck.append() if not a.startswith("slub_debug=")]
        tracked += options.kmemcheck.caches
    given = [a for a in user if a.startswith("slub_debug=")]
    if given and backtraces:
        user[user.index(given[-1])] = with_user_tracking(given[-1])
    elif not given and tracked:
        args.append("slub_debug=U," + ",".join(tracked))
    if backtraces and not any(a.startswith("page_owner=") for a in user):
        args.append("page_owner=on")
    return args + user


def with_user_tracking(arg: str) -> str:
    """slub_debug=FZP -> slub_debug=FZPU; slub_debug=Z,kmalloc-* -> slub_debug=ZU,kmalloc-*
    (the first flag group; an empty one already means every check, U included)."""
    flags, sep, rest = arg.partition("=")[2].partition(",")
    if "U" in flags or not flags:
        return arg
    return f"slub_debug={'' if flags == '-' else flags}U{sep}{rest}"


def _run_steps(lab: Lab, steps: list[Step], doc: dict, deadline: Deadline) -> str | None:
    """Run the steps in order. The first that fails or crashes the guest kernel ends them;
    its description is returned (None: all passed), and the reports are still collected: the
    guest is stopped, not gone, and its leaks are what explains the crash."""
    for step in steps:
        mark = len(lab.guest.shell.text)
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
        except GuestError:
            crash = lab.guest.console.crash()
            if crash is None or not lab.guest.running():
                raise
            _settle_console(lab)
            doc["steps"].append({"kind": step.kind, "argument": step.argument,
                                 "command": step.command, "exit_status": None,
                                 "output": _printed_since(lab, mark), "kernel_crash": crash})
            return f"guest {step.kind} {step.argument!r} crashed the guest kernel: {crash}"
        doc["steps"].append({"kind": step.kind, "argument": step.argument,
                             "command": step.command, "exit_status": status, "output": output})
        if status != 0:
            return (f"guest {step.kind} {step.argument!r} failed with exit status "
                    f"{status}: {output.strip()[-500:]}")
    return None


def _printed_since(lab: Lab, mark: int) -> str:
    """What a command that never finished printed (after the shell's begin marker)."""
    return lab.guest.shell.text[mark:].split("-begin@@\n", 1)[-1]


def _settle_console(lab: Lab, seconds: float = 5) -> None:
    """Let the kernel finish printing its crash report (to its end-of-trace line)."""
    try:
        lab.guest.console.wait_for(r"---\[ end (trace|Kernel panic)", seconds)
    except ConsoleError:
        pass


def _kmemleak_baseline(lab: Lab, deadline: Deadline, backtraces: bool) -> int:
    """Scan once the guest is up and clear what boot left behind, as kernel developers do with
    `echo clear > /sys/kernel/debug/kmemleak`: the report then holds what the steps leaked.
    The annotation hooks (at the calls, not in kmemleak_*) stay on through the steps."""
    lab.gdb.interrupt(timeout=deadline.left())
    lab.gdb.checked("kmemleak scan", timeout=deadline.left())
    out = lab.gdb.checked("kmemleak clear")
    if backtraces:
        lab.gdb.checked("kmemleak module-caches=on")
    lab.gdb.cont()
    m = re.search(r"(\d+) suspect", out)
    return int(m.group(1)) if m else 0


def _kmemleak_report(lab: Lab, deadline: Deadline) -> dict:
    lab.gdb.checked("kmemleak scan", timeout=deadline.left())
    report = json.loads(last_json_line(lab.gdb.checked("kmemleak report --all --json")))
    return {"enabled": True, "leaks": report["leaks"], "suppressed": report["suppressed"],
            "objects": report["objects"], "scan_seconds": report["scan_seconds"],
            "notes": report["notes"], "heap_findings": report["heap_findings"]}


def parse_fail_alloc(text: str, sweep: bool = False) -> tuple[str, int]:
    """`module:NAME,nth=N` (`module:NAME` for a sweep) -> (NAME, N)."""
    kind, _, rest = text.partition(":")
    name, _, nth = rest.partition(",")
    key, _, value = nth.partition("=")
    if kind == "module" and name and sweep and not nth:
        return name.replace("-", "_"), 1
    if kind == "module" and name and not sweep and key == "nth" and value.isdigit() and int(value) >= 1:
        return name.replace("-", "_"), int(value)
    form = "module:NAME" if sweep else "module:NAME,nth=N (N >= 1)"
    raise KmemgdbError(f"--fail-alloc{'-sweep' if sweep else ''}: expected {form}, got {text!r}")


def _fail_alloc_start(lab: Lab, module: str, nth: int, deadline: Deadline) -> None:
    lab.gdb.interrupt(timeout=deadline.left())
    lab.gdb.checked(f"kmem fail-alloc {module} {nth}", timeout=deadline.left())
    lab.gdb.cont()


def sweep(options: RunOptions, module: str, limit: int = 64) -> tuple[dict, int]:
    """--fail-alloc-sweep: one run per N = 1, 2, ... with the module's Nth allocation failing,
    until a run in which the module made fewer than N allocations (nothing was left to fail).
    Every run boots a fresh guest, so an oops at one N cannot disturb the next."""
    runs, status = [], 0
    for nth in range(1, limit + 1):
        one = dataclasses.replace(options, fail_alloc=(module, nth), json_path=None)
        try:
            doc, st = run(one)
        except LAB_ERRORS as exc:
            runs.append({"nth": nth, "error": str(exc)})
            status = 2
            break
        plan = doc["fail_alloc"]
        runs.append({"nth": nth, "injected": plan["injected"], "calls": plan["calls"],
                     "steps": doc["steps"], "step_failure": doc.get("step_failure"),
                     "kmemleak": doc["kmemleak"], "kmemcheck": doc["kmemcheck"],
                     "kernel_reports": doc["kernel_reports"]})
        status = max(status, st)
        if plan["injected"] is None:
            break
    out = {"fail_alloc_sweep": {"module": module, "runs": runs}}
    _write(options.json_path, out)
    return out, status


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
    report = json.loads(last_json_line(lab.gdb.checked("kmemcheck report --json")))
    lab.gdb.checked("kmemcheck 0")
    hidden = lab.gdb.checked("kmem pte list")
    if not hidden.strip().startswith("0 hidden page"):
        raise KmemgdbError(f"kmemcheck left pages hidden: {hidden.strip()[:300]}")
    report["text"] = text.strip()
    return report


def _hook_errors(lab: Lab) -> list[str]:
    """What kmemgdb's hooks failed at while the guest ran: a checker that failed inside a hook
    did not check what it claims to, so the run fails (exit status 2) instead of passing."""
    return json.loads(last_json_line(lab.gdb.checked("kmem errors --json")))


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
        for frame, resolved in zip(chunk, json.loads(last_json_line(out))):
            frame["file"], frame["line"] = resolved["file"], resolved["line"]
            if frame["symbol"] is None:
                frame["symbol"], frame["module"] = resolved["symbol"], resolved["module"]


def _guest_info(lab: Lab) -> dict:
    info = json.loads(last_json_line(lab.gdb.checked("kmem info --json")))
    return {"kernel_release": info["release"], "command_line": info["cmdline"],
            "ram_bytes": lab.guest.ram_size, "memory_total_kb": info["totalram_bytes"] // 1024,
            "smp": lab.guest.spec.smp, "modules": [m["name"] for m in info["modules"]]}


def last_json_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith(("{", "["))]
    if not lines:
        raise KmemgdbError(f"gdb printed no JSON: {output.strip()[-500:]}")
    return lines[-1]


def _write(path: Path | None, doc: dict) -> None:
    if path:
        path.write_text(json.dumps(doc, indent=1) + "\n")
