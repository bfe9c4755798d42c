"""The `kmemgdb` command: build the guest, run jobs in it, attach gdb.

Exit status: 0 no findings, 1 findings, 2 error (one line on stderr, never a traceback).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
from pathlib import Path

from .errors import KmemgdbError
from .run import LAB_ERRORS, KmemcheckSpec, RunOptions, Step, parse_fail_alloc, run, sweep

class UsageError(KmemgdbError):
    pass


class Terminated(Exception):
    """SIGTERM or SIGHUP (a CI job's timeout, a closed terminal): raised in the main thread so
    every context manager on the way out runs: gdb and QEMU ended by pid, the RAM file removed."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum, _frame) -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):     # the cleanup itself is not interrupted
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


class _StepAction(argparse.Action):
    """--insmod and --exec share one ordered list of steps."""

    def __call__(self, parser, namespace, value, option_string=None):
        steps = getattr(namespace, "steps", None) or []
        if self.dest == "insmod":
            words = shlex.split(value)
            if not words:
                raise UsageError("--insmod: expected a .ko file or module name")
            name, params = words[0], words[1:]
            path = Path(name).resolve() if "/" in name or name.endswith(".ko") else Path(name)
            steps.append(Step("insmod", "", str(path), shlex.join(params)))
            namespace.modules = (getattr(namespace, "modules", None) or []) + [path]
        else:
            steps.append(Step("exec", value, value))
        namespace.steps = steps


class _ScriptAction(argparse.Action):
    """-x and -ex share one ordered list, as gdb's own options do."""

    def __call__(self, parser, namespace, value, option_string=None):
        from .gdbmode import ScriptItem
        items = getattr(namespace, "items", None) or []
        namespace.items = items + [ScriptItem(option_string.lstrip("-"), value)]


def build_parser() -> argparse.ArgumentParser:
    top = _Parser(prog="kmemgdb", description="Kernel memory checking from the debugger.")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("build", help="build (or find cached) guest kernel and initramfs; print paths")

    mod = sub.add_parser("module", help="out-of-tree modules")
    modsub = mod.add_subparsers(dest="module_command", required=True, parser_class=_Parser)
    mb = modsub.add_parser("build", help="build module source DIR against the guest kernel")
    mb.add_argument("dir", type=Path)
    _kernel_option(mb)

    r = sub.add_parser("run", help="boot the guest under gdb, run steps, report")
    r.add_argument("--insmod", metavar="KO", action=_StepAction,
                   help="load a module (repeatable); parameters may follow: 'my.ko debug=1'")
    r.add_argument("--exec", metavar="CMD", action=_StepAction, help="guest shell command (repeatable)")
    r.add_argument("--kmemleak", action="store_true", help="host-side leak check")
    r.add_argument("--no-backtraces", dest="backtraces", action="store_false",
                   help="with --kmemleak: no SLUB user tracking (slub_debug=U, on by default: "
                        "allocation backtraces, pid and age of slab leaks, caches kept unmerged)")
    r.add_argument("--kmemcheck", metavar="SPEC",
                   help="host-side uninitialized-read check: comma-separated cache:NAME, "
                        "module:NAME, all, notrack:NAME, oneshot, verify, partial-ok=off, "
                        "bitfield-ok=off, watchdog=SECONDS")
    fail = r.add_mutually_exclusive_group()
    fail.add_argument("--fail-alloc", metavar="module:NAME,nth=N",
                      help="make the Nth allocation the module makes fail (returns NULL)")
    fail.add_argument("--fail-alloc-sweep", metavar="module:NAME",
                      help="one run per N = 1, 2, ... with the module's Nth allocation failing, "
                           "until it makes fewer than N; reports leaks and oopses per N")
    r.add_argument("--json", type=Path, metavar="FILE", help="write the JSON report here")
    r.add_argument("--timeout", type=float, default=600, metavar="SECONDS")
    r.add_argument("--reference-kmemleak", action="store_true",
                   help="boot with the in-kernel kmemleak on and capture its report too")
    _guest_options(r)
    r.add_argument("--workdir", type=Path, help="keep console, gdb and QEMU logs here")

    bench = sub.add_parser("bench", help="benchmarks that print ratios")
    bench.add_argument("what", choices=["kmemleak", "kmemcheck"])
    bench.add_argument("--runs", type=int, default=2)
    _kernel_option(bench)

    demo = sub.add_parser("demo", help="boot, attach gdb, show what the extension sees")
    _guest_options(demo)
    g = sub.add_parser("gdb", help="boot the guest and attach gdb: a prompt, or a batch script")
    _guest_options(g)
    g.add_argument("--insmod", metavar="KO", action="append", default=[], type=Path,
                   help="put a module into the guest's /modules/ (repeatable; load it with "
                        "`guest insmod /modules/NAME.ko`)")
    g.add_argument("--no-backtraces", dest="backtraces", action="store_false",
                   help="boot without SLUB user tracking and page_owner (on by default: leak "
                        "backtraces, pid and age; `kmemleak module-caches` on)")
    g.add_argument("-x", metavar="FILE", dest="items", action=_ScriptAction,
                   help="run the gdb commands in FILE (repeatable, in order with -ex)")
    g.add_argument("-ex", metavar="CMD", dest="items", action=_ScriptAction,
                   help="run one gdb command (repeatable)")
    g.add_argument("--batch", action="store_true",
                   help="run -x/-ex and exit: 0 clean, 1 findings, 2 error, N on `quit N`")
    g.add_argument("--timeout", type=float, default=600, metavar="SECONDS",
                   help="limit of each -x/-ex item (default 600)")
    sh = sub.add_parser("shell", help="the guest shell of a running session on this terminal")
    sh.add_argument("--session", type=int, metavar="PID",
                    help="the session's launcher pid (needed when several run)")
    return top


def _kernel_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel", type=Path, metavar="DIR",
                   help="your kernel: a built tree or O= directory with vmlinux, bzImage and "
                        ".config (checked first for what kmemgdb needs); default: kmemgdb's build")


def _guest_options(p: argparse.ArgumentParser) -> None:
    _kernel_option(p)
    p.add_argument("--memory", type=int, default=256, metavar="MIB")
    p.add_argument("--smp", type=int, default=1)
    p.add_argument("--append", action="append", default=[], metavar="ARG",
                   help="extra kernel command-line argument (repeatable)")


def main(argv: list[str] | None = None) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    try:
        args = build_parser().parse_args(argv)
        return _dispatch(args)
    except Terminated as exc:
        with contextlib.suppress(OSError):      # after SIGHUP the terminal may be gone
            print(f"kmemgdb: {exc}: guest and gdb ended", file=sys.stderr)
        return 128 + exc.signum
    except UsageError as exc:
        print(f"kmemgdb: {exc}", file=sys.stderr)
        return 2
    except LAB_ERRORS as exc:
        print(f"kmemgdb: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kmemgdb: interrupted", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    from . import demo, kernel, modbuild, initramfs

    if args.command == "build":
        k = kernel.ensure_kernel()
        print(f"kernel {k.release}: {k.bzimage}\nvmlinux: {k.vmlinux}\n"
              f"initramfs: {initramfs.ensure_initramfs(k.sample_modules())}")
        return 0
    if args.command == "module":
        if not args.dir.is_dir():
            raise UsageError(f"module build: {args.dir} is not a directory")
        for ko in modbuild.build_module(_kernel(args) or kernel.ensure_kernel(), args.dir):
            print(ko)
        return 0
    if args.command == "run":
        return _run(args)
    if args.command == "bench":
        from .bench import bench_kmemcheck, bench_kmemleak
        # kmemleak's bench compares with the in-kernel kmemleak; both load test modules.
        needs = ["--kmemcheck" if args.what == "kmemcheck" else "--reference-kmemleak", "--insmod"]
        bench = bench_kmemcheck if args.what == "kmemcheck" else bench_kmemleak
        return bench(args.runs, kernel=_kernel(args, needs))
    if args.command == "demo":
        # SLUB user tracking on kmalloc caches: leak reports with allocation backtraces.
        return demo.demo(args.memory, args.smp, args.append or ["slub_debug=U,kmalloc-*"],
                         _kernel(args, ["--kmemleak", "--insmod"]))
    if args.command == "gdb":
        return _gdb(args)
    if args.command == "shell":
        from .shell import shell
        return shell(args.session)
    raise UsageError(f"unknown command {args.command}")


def _gdb(args) -> int:
    from .gdbmode import GdbOptions, batch, interactive
    from .guestlab import LabOptions
    items = getattr(args, "items", None) or []
    if args.batch and not items:
        raise UsageError("gdb --batch: give the commands with -x FILE or -ex CMD")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    from .run import RunOptions, kernel_arguments
    kernel = _kernel(args, ["--insmod"] if args.insmod else [])
    modules = [_resolve_module(p, kernel) for p in args.insmod]
    append = kernel_arguments(RunOptions(kmemleak=True, backtraces=args.backtraces,
                                         append=args.append))
    options = GdbOptions(LabOptions(modules=modules, memory_mib=args.memory, smp=args.smp,
                                    append=append, kernel=kernel), items, args.batch,
                         args.timeout, args.backtraces)
    return batch(options) if args.batch else interactive(options)


def _print_leaks(section: dict) -> None:
    from gdbext.core.leakreport import HeapFinding, leak_from_json, render_heap_finding, render_report
    from gdbext.core.render import Painter
    leaks = [leak_from_json(item) for item in section["leaks"]]
    paint = Painter(sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    for finding in section.get("heap_findings", []):
        print(render_heap_finding(HeapFinding.from_json(finding), paint))
    print(render_report(leaks, paint, section["notes"]))
    print(f"kmemleak: {section['objects']} objects scanned in {section['scan_seconds'] * 1000:.0f} ms"
          + (f", {section['suppressed']} suppressed" if section["suppressed"] else ""))


def _print_kernel_reports(reports: list[dict]) -> None:
    for report in reports:
        who = f' (comm "{report["comm"]}", pid {report["pid"]})' if report["comm"] else ""
        print(f"kernel {report['kind']} report{who}:\n" + "\n".join(
            "  " + line for line in report["text"].splitlines()[:40]))
    if reports:
        print(f"kernel: {len(reports)} report(s) on the console during the steps")


def _print_injected(plan: dict) -> None:
    injected = plan["injected"]
    if injected is None:
        print(f"fail-alloc: module {plan['module']} made {plan['calls']} allocation(s): "
              f"allocation {plan['nth']} never happened")
        return
    where = injected["backtrace"][0]["symbol"] if injected["backtrace"] else hex(injected["site"])
    print(f"fail-alloc: allocation {plan['nth']} of module {plan['module']} failed: "
          f"{injected['function']}() called from {where}")


def _print_sweep(section: dict) -> None:
    for one in section["runs"]:
        if "error" in one:
            print(f"N={one['nth']}: error: {one['error']}")
            continue
        leaks = [l for l in one["kmemleak"]["leaks"] if l["kind"] == "direct"]
        what = (f"{one['injected']['function']}() fails" if one["injected"]
                else f"only {one['calls']} allocation(s): nothing fails")
        print(f"N={one['nth']}: {what}: {len(leaks)} leak(s), "
              f"{len(one['kernel_reports'])} kernel report(s), "
              f"{len(one['kmemcheck']['reports'])} kmemcheck report(s)")
        for leak in leaks:
            site = next((f["symbol"] for f in leak["backtrace"] if f["module"]), None)
            print(f"  unreferenced {leak['size']} bytes at {leak['address']:#x}"
                  + (f" allocated at {site}" if site else ""))
        for report in one["kernel_reports"]:
            print(f"  kernel {report['kind']}: {report['title']}")


def _print_kmemcheck(section: dict) -> None:
    print(section.get("text", ""))
    stats = section.get("stats") or {}
    if stats:
        print(f"kmemcheck: {stats['faults']} tracked accesses, "
              f"{section['fast_path_fraction']:.1%} completed in one stop, "
              f"{stats['stepped']} single-stepped, {stats['lost']} reports lost")


def _kernel(args, needs: list[str] | tuple[str, ...] = ()):
    """--kernel DIR: the user's build, its config checked against what the command NEEDS (run
    options such as --kmemcheck); features it turns off are said once. None: kmemgdb's build."""
    if not getattr(args, "kernel", None):
        return None
    from .kernel import kernel_from_dir
    from .kernelcheck import check_config, require
    kernel = kernel_from_dir(args.kernel)
    check = check_config(kernel.config())
    require(check, kernel.release, list(needs))
    if check.disabled:
        print(f"kmemgdb: kernel {kernel.release}:\n  " + check.describe().replace("\n", "\n  "),
              file=sys.stderr)
    return kernel


def _resolve_module(path: Path, kernel=None) -> Path:
    """A .ko path, or the name of a module of the guest kernel build (`kmemleak-test`)."""
    if path.is_file() and path.suffix == ".ko":
        return path
    if len(path.parts) == 1 and not path.suffix:
        from .kernel import ensure_kernel
        for ko in (kernel or ensure_kernel()).modules():
            if ko.stem.replace("-", "_") == path.name.replace("-", "_"):
                return ko
    raise UsageError(f"--insmod {path}: not a .ko file nor a module of the guest kernel")


def _run(args) -> int:
    try:
        kmemcheck = KmemcheckSpec.parse(args.kmemcheck) if args.kmemcheck is not None else None
    except KmemgdbError as exc:
        raise UsageError(str(exc)) from None
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    try:
        fail_alloc = parse_fail_alloc(args.fail_alloc) if args.fail_alloc else None
        swept = parse_fail_alloc(args.fail_alloc_sweep, sweep=True)[0] if args.fail_alloc_sweep else None
    except KmemgdbError as exc:
        raise UsageError(str(exc)) from None
    needs = [opt for opt, on in (("--kmemleak", args.kmemleak), ("--kmemcheck", kmemcheck),
                                 ("--reference-kmemleak", args.reference_kmemleak),
                                 ("--insmod", getattr(args, "modules", None))) if on]
    kernel = _kernel(args, needs)
    modules = [_resolve_module(p, kernel) for p in getattr(args, "modules", None) or []]
    for step in getattr(args, "steps", None) or []:
        if step.kind == "insmod":
            ko = _resolve_module(Path(step.argument), kernel)
            step.command = " ".join(filter(None, ["insmod", f"/modules/{ko.name}", step.params]))
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    options = RunOptions(steps=getattr(args, "steps", None) or [],
                         modules=modules,
                         json_path=args.json, timeout=args.timeout,
                         reference_kmemleak=args.reference_kmemleak, kmemleak=args.kmemleak,
                         kmemcheck=kmemcheck, backtraces=args.backtraces, fail_alloc=fail_alloc,
                         memory_mib=args.memory, smp=args.smp, append=args.append,
                         workdir=args.workdir, kernel=kernel)
    if swept:
        doc, status = sweep(options, swept)
        _print_sweep(doc["fail_alloc_sweep"])
        return status
    doc, status = run(options)
    if "fail_alloc" in doc:
        _print_injected(doc["fail_alloc"])
    for step in doc["steps"]:
        print(f"$ {step['argument'] if step['kind'] == 'exec' else 'insmod ' + step['argument']}"
              + (f"  (crashed: {step['kernel_crash']})" if "kernel_crash" in step
                 else f"  (exit {step['exit_status']})"))
        if step["output"]:
            print(step["output"].rstrip("\n"))
    if doc["kmemleak"]["enabled"]:
        _print_leaks(doc["kmemleak"])
    if doc["kmemcheck"]["enabled"]:
        _print_kmemcheck(doc["kmemcheck"])
    _print_kernel_reports(doc["kernel_reports"])
    if "step_failure" in doc:
        print(f"kmemgdb: {doc['step_failure']}", file=sys.stderr)
    if "reference_kmemleak" in doc:
        print(f"in-kernel kmemleak: {len(doc['reference_kmemleak']['leaks'])} unreferenced object(s)")
    if args.json:
        print(f"JSON report: {args.json}")
    return status


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
