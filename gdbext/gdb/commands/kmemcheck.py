"""`kmemcheck`: the host-side uninitialized-memory checker, with the kernel's 0/1/2 modes."""
from __future__ import annotations

import argparse
import json

import gdb

from ...core import shadow as S
from ...core.completion import file_names
from ...core.kmemcheck import KmemcheckError
from ...core.kmemcheck_report import finding_json, render_finding, suppression_specs
from ..guestnames import GUEST_NAMES
from ..kmemcheck import KMEMCHECK, Suppression
from .base import (ADDRESS_HELP, KmemCommand, address, parser, require_stopped_guest,
                   verb_lines)
from .kmem import painter


def mode(text: str) -> int:
    if text not in ("0", "1", "2"):
        raise argparse.ArgumentTypeError(f"unknown argument {text!r}: 0 off, 1 on, 2 one-shot")
    return int(text)


def scope_names(done: list[str], _partial: str) -> list[str]:
    """NAME after `cache` or `module` in `kmemcheck track|notrack`."""
    return {"cache": GUEST_NAMES.caches, "module": GUEST_NAMES.modules}.get(done[0], list)()


MODES = "1 on, 2 one-shot, 0 off; alone: the state"


class Kmemcheck(KmemCommand):
    PARSER = parser("kmemcheck", "Host-side kmemcheck: catch reads of uninitialized and freed "
                    "kernel heap memory.", """\
Without an argument: the state (tracked scope, hidden pages, objects, reports, fault counts).
  1  on: hide the pages of tracked objects and check every access to them
  2  one-shot: on, and off again after the first report
  0  off: every hidden page is shown again; the guest keeps running
Scope first: `kmemcheck track cache NAME`; `kmemcheck help` lists the subcommands. The guest
must map its direct map with 4 KiB pages: boot it with debug_pagealloc=on.
Options: `set kmemcheck partial-ok|bitfield-ok|report-limit|shadow-window|verify|watchdog`.""")
    PARSER.add_argument("mode", nargs="?", type=mode, metavar="0|1|2", help=MODES)
    NEEDS_STOPPED_GUEST = False

    def __init__(self):
        super().__init__("kmemcheck", prefix=True)

    def run(self, args) -> None:
        KMEMCHECK.finish_cleanup()
        if args.mode is None:
            gdb.write(status() + "\n")
            return
        if args.mode == 0:
            shown = KMEMCHECK.disable()
            gdb.write(f"kmemcheck: off, {shown} hidden page(s) shown again\n")
            return
        require_stopped_guest("kmemcheck")
        hidden = KMEMCHECK.enable(args.mode)
        gdb.write(f"kmemcheck: {'one-shot' if args.mode == 2 else 'on'}, tracking "
                  f"{KMEMCHECK.scope.describe()}: {hidden} page(s) hidden\n")


def status() -> str:
    engine = KMEMCHECK.current_engine()
    state = {0: "off", 1: "on", 2: "on (one-shot)"}[KMEMCHECK.mode]
    o = KMEMCHECK.options
    lines = [f"kmemcheck: {state}", f"tracked: {KMEMCHECK.scope.describe()}",
             f"hidden pages: {len(KMEMCHECK.pages)}"]
    if engine is not None:
        st = engine.stats
        lines += [
            f"tracked objects: {engine.tracked_objects()} allocated",
            f"reports: {len(engine.reports)} ({st.lost} lost over the limit, "
            f"{st.suppressed} suppressed)",
            f"tracked accesses: {st.faults} ({st.emulated} emulated in one stop, "
            f"{st.stepped} single-stepped, {st.allocator} by the allocator; fast path "
            f"{engine.fast_fraction():.1%})"]
        if o.verify or st.verified or st.mismatches:
            lines.append(f"verified against the guest: {st.verified}, mismatches: {st.mismatches}")
    lines.append(f"options: partial-ok {'on' if o.partial_ok else 'off'}, bitfield-ok "
                 f"{'on' if o.bitfield_ok else 'off'}, report-limit {o.report_limit}, "
                 f"shadow-window {o.window_log2} ({1 << o.window_log2} bytes), verify "
                 f"{'on' if o.verify else 'off'}, watchdog "
                 f"{f'{KMEMCHECK.watchdog:g} s' if KMEMCHECK.watchdog else 'off'}")
    if KMEMCHECK.suppressions:
        lines.append("suppressions: " + ", ".join(s.text for s in KMEMCHECK.suppressions))
    return "\n".join(lines)


class KmemcheckTrack(KmemCommand):
    PARSER = parser("kmemcheck track", "Choose which heap objects kmemcheck watches.", """\
Each watched access stops the guest.
  cache NAME    objects of slab cache NAME (/sys/kernel/slab/NAME; glob patterns work)
  all           every slab cache except task_struct, kmem_cache, kmem_cache_node (slow)
  module NAME   objects allocated by module NAME's code
Nothing is tracked until asked. Works with kmemcheck on or off.""")
    PARSER.add_argument("what", choices=["all", "cache", "module"], metavar="all|cache|module")
    PARSER.add_argument("name", nargs="?", metavar="NAME", complete=scope_names,
                        help="a cache name or glob, or a module name")
    NEEDS_STOPPED_GUEST = False

    def __init__(self):
        super().__init__("kmemcheck track")

    def run(self, args) -> None:
        scope = KMEMCHECK.scope
        if args.what != "all" and not args.name:
            raise gdb.GdbError(f"kmemcheck track: {args.what} needs a NAME")
        if args.what == "all":
            scope.all = True
        elif args.what == "cache":
            scope.caches.add(args.name)
            scope.notrack.discard(args.name)
        else:
            scope.modules.add(args.name.replace("-", "_"))
        changed = KMEMCHECK.apply_scope()
        gdb.write(f"kmemcheck: tracking {scope.describe()}"
                  + (f" ({changed} page(s) hidden now)" if KMEMCHECK.engine else "") + "\n")


class KmemcheckNotrack(KmemCommand):
    PARSER = parser("kmemcheck notrack", "Stop watching a cache (the kernel's SLAB_NOTRACK) or a "
                    "module.", """\
A cache named by `track cache NAME` is dropped from the list; any other name becomes an
exception to `track all` or to a glob (`track cache kmalloc-*`, `notrack cache kmalloc-64`).""")
    PARSER.add_argument("what", choices=["cache", "module"], metavar="cache|module")
    PARSER.add_argument("name", metavar="NAME", complete=scope_names, help="a cache or module name")
    NEEDS_STOPPED_GUEST = False

    def __init__(self):
        super().__init__("kmemcheck notrack")

    def run(self, args) -> None:
        if args.what == "module":
            KMEMCHECK.scope.modules.discard(args.name.replace("-", "_"))
        elif args.name in KMEMCHECK.scope.caches:
            KMEMCHECK.scope.caches.discard(args.name)       # undo a `track cache NAME`
        else:
            KMEMCHECK.scope.notrack.add(args.name)          # an exception to a glob or `all`
        KMEMCHECK.apply_scope()
        gdb.write(f"kmemcheck: tracking {KMEMCHECK.scope.describe()}\n")


class KmemcheckShadow(KmemCommand):
    PARSER = parser("kmemcheck shadow", "Print the shadow of a range: a unallocated, "
                    "u uninitialized, i initialized, f freed.",
                    "Untracked bytes print as '.'.")
    PARSER.add_argument("addr", type=address, metavar="ADDR", help=ADDRESS_HELP)
    PARSER.add_argument("length", type=lambda t: int(t, 0), nargs="?", metavar="LEN",
                        help="bytes (default: the shadow window, set kmemcheck shadow-window)")
    NEEDS_STOPPED_GUEST = False

    def __init__(self):
        super().__init__("kmemcheck shadow")

    def run(self, args) -> None:
        engine = KMEMCHECK.current_engine()
        if engine is None:
            raise gdb.GdbError("kmemcheck shadow: kmemcheck has not run yet (`kmemcheck 1`)")
        length = args.length if args.length is not None else 1 << KMEMCHECK.options.window_log2
        if not 0 < length <= 1 << 20:
            raise gdb.GdbError("kmemcheck shadow: LEN must be between 1 and 1048576")
        states = engine.shadow.get(args.addr, length)
        for row in range(0, length, 32):
            letters = "".join("." if not engine.shadow.tracked(args.addr + row + i) else S.LETTERS[s]
                              for i, s in enumerate(states[row:row + 32]))
            gdb.write(f"{args.addr + row:#018x}: {letters}\n")


class KmemcheckReport(KmemCommand):
    PARSER = parser("kmemcheck report", "Show kmemcheck's reports so far.")
    PARSER.add_argument("--json", action="store_true", help="one JSON object on one line")
    NEEDS_STOPPED_GUEST = False

    def __init__(self):
        super().__init__("kmemcheck report")

    def run(self, args) -> None:
        engine = KMEMCHECK.current_engine()
        reports = engine.reports if engine else []
        if args.json:
            st = engine.stats if engine else None
            gdb.write(json.dumps({
                "enabled": KMEMCHECK.mode != 0, "scope": KMEMCHECK.scope.describe(),
                "reports": [finding_json(f) for f in reports],
                "stats": st.__dict__ if st else {},
                "fast_path_fraction": engine.fast_fraction() if engine else None}) + "\n")
            return
        for finding in reports:
            gdb.write(render_finding(finding, painter()) + "\n\n")
        gdb.write(f"kmemcheck: {len(reports)} report(s)\n")


def suppression_words(_done: list[str], partial: str) -> list[str]:
    if partial.startswith("cache="):
        return [f"cache={name}" for name in GUEST_NAMES.caches()]
    return ["site=", "cache=", "field="]


class KmemcheckSuppress(KmemCommand):
    PARSER = parser("kmemcheck suppress", "Do not report matching findings (host-side "
                    "__GFP_NOTRACK_FALSE_POSITIVE).", """\
  site=GLOB   the object's allocation backtrace has a function matching the glob
  cache=GLOB  the object's slab cache matches
  field=GLOB  the accessed bytes are that field (`check_req.timeout`, `sk_buff.*`)
--file FILE loads one per line (`#` comments). `kmemcheck` lists them.""")
    PARSER.add_argument("spec", nargs="?", metavar="site=|cache=|field=GLOB",
                        complete=suppression_words)
    PARSER.add_argument("--clear", action="store_true", help="remove every suppression")
    PARSER.add_argument("--file", metavar="FILE", complete=file_names,
                        help="load suppressions from FILE, one per line")
    NEEDS_STOPPED_GUEST = False

    def __init__(self):
        super().__init__("kmemcheck suppress")

    def run(self, args) -> None:
        if args.clear:
            KMEMCHECK.suppressions.clear()
            gdb.write("kmemcheck: suppressions cleared\n")
            return
        if args.file:
            return self.load(args.file)
        if not args.spec:
            raise gdb.GdbError("kmemcheck suppress: give site=GLOB, cache=GLOB or field=STRUCT.FIELD")
        KMEMCHECK.suppressions.append(Suppression(args.spec))
        gdb.write(f"kmemcheck: suppressing {args.spec}\n")

    def load(self, path: str) -> None:
        try:
            with open(path) as fh:
                specs = suppression_specs(fh.read())
        except OSError as exc:
            raise gdb.GdbError(f"kmemcheck suppress: {exc.strerror}: {path}") from None
        loaded = []
        for number, spec in specs:
            try:
                loaded.append(Suppression(spec))
            except KmemcheckError as exc:
                raise gdb.GdbError(f"kmemcheck suppress: {path}:{number}: {exc}") from None
        KMEMCHECK.suppressions += loaded
        gdb.write(f"kmemcheck: {len(loaded)} suppression(s) loaded from {path}\n")


SUBCOMMANDS = (KmemcheckTrack, KmemcheckNotrack, KmemcheckShadow, KmemcheckReport,
               KmemcheckSuppress)
SUBCOMMAND_PARSERS = {c.PARSER.prog.split()[-1]: c.PARSER for c in SUBCOMMANDS}


class KmemcheckHelp(KmemCommand):
    PARSER = parser("kmemcheck help",
                    "List the subcommands of kmemcheck, or show one's arguments.")
    PARSER.add_argument("verb", nargs="?", metavar="SUBCOMMAND",
                        choices=list(SUBCOMMAND_PARSERS))
    NEEDS_STOPPED_GUEST = False

    def __init__(self):
        super().__init__("kmemcheck help")

    def run(self, args) -> None:
        if args.verb:
            gdb.write(SUBCOMMAND_PARSERS[args.verb].full_help() + "\n")
            return
        gdb.write("\n".join([Kmemcheck.PARSER.summary, "",
                             verb_lines([(Kmemcheck.PARSER.usage_line(), MODES),
                                         *((p.usage_line(), p.summary)
                                           for p in SUBCOMMAND_PARSERS.values())]), "",
                             "`kmemcheck help SUBCOMMAND` (or `help kmemcheck SUBCOMMAND`) shows "
                             "its arguments;\n`help set kmemcheck` the options."]) + "\n")


class _Option(gdb.Parameter):
    def __init__(self, name: str, kind, attr: str, doc: str, *extra):
        self.__doc__ = doc
        self.set_doc = f"Set kmemcheck's {name}."
        self.show_doc = f"Show kmemcheck's {name}."
        super().__init__(f"kmemcheck {name}", gdb.COMMAND_DATA, kind, *extra)
        self.attr = attr
        self.value = int(KMEMCHECK.watchdog) if attr == "watchdog" else getattr(KMEMCHECK.options, attr)

    def get_set_string(self) -> str:
        value = self.value
        if self.attr == "watchdog":
            if KMEMCHECK.armed is not None:
                self.value = KMEMCHECK.watchdog
                raise gdb.GdbError("kmemcheck watchdog: set it while kmemcheck is off")
            KMEMCHECK.watchdog = float(value)
            return ""
        if self.attr == "window_log2" and not 2 <= value <= 8:
            self.value = KMEMCHECK.options.window_log2
            raise gdb.GdbError("kmemcheck shadow-window: log2 bytes between 2 and 8")
        if self.attr == "report_limit" and value < 1:
            self.value = KMEMCHECK.options.report_limit
            raise gdb.GdbError("kmemcheck report-limit: at least 1")
        setattr(KMEMCHECK.options, self.attr, value)
        return ""


class _Prefix(gdb.Command):
    def __init__(self, name: str):
        super().__init__(name, gdb.COMMAND_DATA, prefix=True)


def register() -> None:
    from ..kmemcheck import register_events
    register_events()
    _Prefix("set kmemcheck")
    _Prefix("show kmemcheck")
    _Option("partial-ok", gdb.PARAM_BOOLEAN, "partial_ok",
            "A read is fine when any of its bytes is initialized (a 16-bit field read with a "
            "32-bit load), as CONFIG_KMEMCHECK_PARTIAL_OK did.")
    _Option("bitfield-ok", gdb.PARAM_BOOLEAN, "bitfield_ok",
            "Uninitialized bits of bitfield storage are not reported (what the kernel's "
            "kmemcheck_annotate_bitfield() did, found from DWARF instead).")
    _Option("report-limit", gdb.PARAM_ZUINTEGER, "report_limit",
            "Reports kept (the kernel's error queue size); later ones are counted as lost.")
    _Option("shadow-window", gdb.PARAM_ZUINTEGER, "window_log2",
            "Bytes of memory and shadow shown around a reported address, as log2 (5: 32 bytes).")
    _Option("verify", gdb.PARAM_BOOLEAN, "verify",
            "Also run each instruction the host completes in the guest (pages shown, one "
            "single-step) and compare registers, flags and written bytes; a difference is an "
            "internal error and the guest keeps its own result. Slower: a check of kmemgdb.")
    _Option("watchdog", gdb.PARAM_ZUINTEGER, "watchdog",
            "Seconds of guest running time without progress (a stopped clock, one access "
            "faulting over and over, a hook that does not return) after which kmemcheck stops "
            "the guest, prints what it was doing and turns off; 0: never.")
    for cls in (Kmemcheck, *SUBCOMMANDS, KmemcheckHelp):
        cls()
