"""`kmemleak`: the kernel's /sys/kernel/debug/kmemleak interface, run from the debugger."""
from __future__ import annotations

import argparse
import json

import gdb

from ...core import leaks as L
from ...core.leakreport import (SuppressionError, hex_dump, parse_suppressions,
                                render_heap_finding, render_leak, render_report, suppression_for)
from ...core.completion import file_names
from ...core.heap.model import KIND_NAMES, MIN_COUNT_BLACK
from .. import target
from ..heapctx import guest_context
from ..kmemleak import KMEMLEAK, Describer, jiffies_now, periodic
from ..session import SESSION
from .base import (ADDRESS_HELP, VerbCommand, address, on_off, parser, require_stopped_guest,
                   verb)
from .kmem import painter


def _report(prog: str, summary: str, details: str = "", since_mark: bool = True):
    p = parser(prog, summary, details)
    p.add_argument("--all", action="store_true", help="list indirect leaks too")
    if since_mark:
        p.add_argument("--new", action="store_true", help="only leaks allocated since the mark")
    p.add_argument("--json", action="store_true", help="one JSON object on one line")
    return p


def period(text: str) -> float:
    """scan=on (every 600 s, the kernel's default), scan=off (0), scan=SECS."""
    if text == "off":
        return 0.0
    try:
        seconds = 600.0 if text == "on" else float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError("expected scan=on, scan=off or scan=SECONDS")
    return seconds


SCAN = parser("kmemleak scan", "Scan now; or scan periodically while the guest runs.", """\
Without an argument: walk the heap and scan now (the guest must be stopped).
on|off|SECS: periodic scans while the guest runs: interrupt, scan, resume (on: every 600 s, as
the kernel's kmemleak thread). After the first one gdb keeps its prompt while the guest runs,
as with `continue &`: stop the guest with `interrupt`.""")
SCAN.add_argument("period", nargs="?", type=period, metavar="on|off|SECS",
                  complete=("on", "off"), help="periodic scans: on (600 s), off, or seconds")
REPORT = _report("kmemleak report", "Show the report (also plain `kmemleak`).",
                 "Heap bugs, then direct leaks, each with how many indirect leaks hang from it.")
NEW = _report("kmemleak new", "Report only leaks allocated since `kmemleak mark`.",
              since_mark=False)
CLEAR = parser("kmemleak clear", "Mark every current suspect as reported: only new leaks show.")
MARK = parser("kmemleak mark", "Remember what is allocated now (see `kmemleak new`).")
DUMP = parser("kmemleak dump", "What is known about the object containing ADDR.",
              "Cache, size, state at the last scan, allocation backtrace, pid, age, referrers.")
DUMP.add_argument("addr", type=address, metavar="ADDR", help=ADDRESS_HELP)
WHY = parser("kmemleak why", "A shortest reference chain from a root to the object at ADDR.",
             "Or why the object is unreferenced (a direct or an indirect leak), or ignored.")
WHY.add_argument("addr", type=address, metavar="ADDR", help=ADDRESS_HELP)


def _switch(verb_name: str, summary: str, details: str = ""):
    p = parser(f"kmemleak {verb_name}", summary, details)
    p.add_argument("state", type=on_off, metavar="on|off")
    return p


STACK = _switch("stack", "Scan task stacks (default on).")
AGE = _switch("age", "The kernel's rule: unreferenced in two scans and older than 5 s.",
              "Default off: the guest is stopped during a scan, so reports are immediate.")
HOOKS = _switch("hooks", "Watch the guest's kmemleak_* annotation calls (default on).", """\
Watch the kernel's and modules' kmemleak_not_leak/ignore/no_scan/free_part/scan_area/update_trace
calls, at each call instruction rather than in the functions (a breakpoint makes QEMU run its
whole page slowly, and they share one with kmemleak_alloc/free), and task exits (names of
exited tasks). Annotations already seen are kept when off.""")
MODULE_CACHES = _switch("module-caches", "SLUB user tracking for caches modules create.", """\
Give every cache a module creates from now on SLUB user tracking (allocation backtraces), as
slub_debug=U,NAME would: its kmem_cache_create() call gets SLAB_STORE_USER added (default off).""")
SUPPRESS = parser("kmemleak suppress", "Load suppressions from FILE.",
                  "One per line: function=GLOB module=NAME cache=GLOB (all given fields must "
                  "match).")
SUPPRESS.add_argument("file", metavar="FILE", complete=file_names)
SUPPRESSIONS = parser("kmemleak suppressions", "List suppressions; generate or clear them.",
                      "generate: print entries matching the current report; clear: drop them all.")
SUPPRESSIONS.add_argument("action", nargs="?", choices=("generate", "clear"),
                          metavar="generate|clear")
ON = parser("kmemleak on", "Enable kmemleak.")
OFF = parser("kmemleak off", "Disable kmemleak (also removes its hooks).")


class KmemleakCommand(VerbCommand):
    SUMMARY = """\
Host-side kmemleak: find kernel memory leaks from the debugger.
The kernel's /sys/kernel/debug/kmemleak interface, typed at the gdb prompt:"""
    NOTES = """\
A verb's value may follow `=`, as in the kernel's interface: kmemleak stack=on, dump=ADDR,
scan=SECS. `kmemleak help VERB` shows a verb's arguments."""
    DEFAULT_VERB = "report"

    def __init__(self):
        super().__init__("kmemleak")

    # -- scanning and reports ----------------------------------------------------------------
    @verb(SCAN)
    def scan(self, opts) -> None:
        if opts.period is not None:
            return periodic_scans(opts.period)
        require_stopped_guest("kmemleak scan")
        if not KMEMLEAK.enabled:
            raise gdb.GdbError("kmemleak scan: kmemleak is off (`kmemleak on`)")
        outcome = KMEMLEAK.scan()
        direct, suppressed = KMEMLEAK.suspects(outcome)
        gdb.write(f"kmemleak: {len(outcome.snapshot.heap)} objects scanned in "
                  f"{outcome.seconds * 1000:.0f} ms: {direct} suspected memory leak(s)"
                  f"{f', {suppressed} suppressed' if suppressed else ''} (see `kmemleak`)\n")
        for finding in outcome.heap_findings:
            gdb.write(f"kmemleak: {finding.kind}: {finding.what} (its slab's objects are never "
                      "reported; see `kmemleak`)\n")

    @verb(REPORT)
    def report(self, opts) -> None:
        show(opts, since_mark=opts.new)

    @verb(NEW)
    def new(self, opts) -> None:
        show(opts, since_mark=True)

    @verb(CLEAR)
    def clear(self, _opts) -> None:
        KMEMLEAK.state.clear(_last().leaks)
        gdb.write(f"kmemleak: {len(_last().leaks)} suspect(s) marked as reported\n")

    @verb(MARK)
    def mark(self, _opts) -> None:
        require_stopped_guest("kmemleak mark")
        outcome = KMEMLEAK.scan()
        jiffies = jiffies_now(guest_context())
        KMEMLEAK.state.set_mark(KMEMLEAK.live_objects(), jiffies)
        gdb.write(f"kmemleak: mark set at jiffies {jiffies} ({len(outcome.snapshot.heap)} live "
                  "objects); `kmemleak new` reports leaks allocated after it\n")

    # -- objects ------------------------------------------------------------------------------
    @verb(DUMP)
    def dump(self, opts) -> None:
        addr = opts.addr
        outcome, i = _object_at("kmemleak dump", addr)
        heap, res = outcome.snapshot.heap, outcome.result
        leak = Describer(guest_context(), heap)(i, "-", None)
        state = ("referenced" if res.gray[i] else
                 "unreferenced (direct leak)" if res.direct[i] else "unreferenced (indirect leak)")
        if heap.min_count[i] == 0:
            state = "not a leak (kmemleak_not_leak, a live task stack, or an untrusted slab)"
        elif heap.min_count[i] < 0:
            state = "ignored (kmemleak_ignore, or a cached task stack)"
        lines = [f"object {leak.address:#x} (size {leak.size}), {leak.object_kind}"
                 + (f" from cache {leak.cache}" if leak.cache else ""),
                 f"  offset of {addr:#x}: {addr - leak.address:#x}",
                 f"  state at the last scan: {state}, {int(res.count[i])} reference(s)"]
        if leak.pid is not None:
            lines.append(f'  allocated by pid {leak.pid} ("{leak.comm or "?"}"), jiffies {leak.jiffies}'
                         + (f", age {leak.age:.3f}s" if leak.age is not None else ""))
        lines.append("  hex dump (first 32 bytes):")
        lines += hex_dump(leak.hex)
        lines.append("  allocation backtrace:")
        lines += ["    " + f.render() for f in leak.backtrace] or ["    (not recorded)"]
        refs = referrers(outcome, i)
        lines.append(f"  referenced from ({len(refs)}):")
        lines += ["    " + r for r in refs[:16]] or ["    nothing"]
        gdb.write("\n".join(lines) + "\n")

    @verb(WHY)
    def why(self, opts) -> None:
        outcome, i = _object_at("kmemleak why", opts.addr)
        heap, res = outcome.snapshot.heap, outcome.result
        if heap.min_count[i] == MIN_COUNT_BLACK:
            gdb.write(f"{describe_object(heap, i)} is ignored (kmemleak_ignore or "
                      "kmemleak_free_part): never reported, never scanned\n")
            return
        if not res.gray[i]:
            kind = "a direct leak" if res.direct[i] else "an indirect leak"
            gdb.write(f"{describe_object(heap, i)} is unreferenced: {kind}"
                      + ("" if res.direct[i] else
                         f", reachable only from leaked {describe_object(heap, int(res.owner[i]))}")
                      + "\n")
            return
        gdb.write("\n".join(reference_chain(outcome, i)) + "\n")

    # -- options -----------------------------------------------------------------------------
    @verb(STACK)
    def stack(self, opts) -> None:
        KMEMLEAK.stack_scan = opts.state
        gdb.write(f"kmemleak: task stacks {'are' if KMEMLEAK.stack_scan else 'are not'} scanned\n")

    @verb(HOOKS)
    def hooks(self, opts) -> None:
        KMEMLEAK.hooks_wanted = opts.state
        if KMEMLEAK.hooks_wanted and KMEMLEAK.enabled and target.connected():
            KMEMLEAK.install_hooks()
        elif not KMEMLEAK.hooks_wanted:
            KMEMLEAK.remove_hooks()
        gdb.write(f"kmemleak: annotation hooks {'on' if KMEMLEAK.hooks else 'off'} "
                  f"({len(KMEMLEAK.annotations.calls)} annotation(s) remembered)\n")

    @verb(MODULE_CACHES)
    def module_caches(self, opts) -> None:
        on = opts.state
        if on:
            require_stopped_guest("kmemleak module-caches")
        KMEMLEAK.track_module_caches(on)
        gdb.write(f"kmemleak: caches modules create {'get' if on else 'do not get'} SLUB user "
                  "tracking\n")

    @verb(AGE)
    def age(self, opts) -> None:
        KMEMLEAK.state.age_rule = opts.state
        gdb.write(f"kmemleak: age rule {'on' if KMEMLEAK.state.age_rule else 'off'}\n")

    @verb(SUPPRESS)
    def suppress(self, opts) -> None:
        try:
            with open(opts.file) as fh:
                sups = parse_suppressions(fh.read(), opts.file)
        except OSError as exc:
            raise gdb.GdbError(f"kmemleak suppress: {exc.strerror}: {opts.file}") from None
        except SuppressionError as exc:
            raise gdb.GdbError(f"kmemleak suppress: {exc}") from None
        KMEMLEAK.state.suppressions += sups
        gdb.write(f"kmemleak: {len(sups)} suppression(s) loaded from {opts.file}\n")

    @verb(SUPPRESSIONS)
    def suppressions(self, opts) -> None:
        if opts.action == "clear":
            KMEMLEAK.state.suppressions = []
            gdb.write("kmemleak: suppressions cleared\n")
            return
        if opts.action == "generate":
            leaks, _ = KMEMLEAK.state.filter(_last().leaks)
            lines = {suppression_for(l).line() for l in leaks if l.kind == "direct"}
            gdb.write("".join(f"{line}\n" for line in sorted(lines)))
            return
        for s in KMEMLEAK.state.suppressions:
            gdb.write(s.line() + "\n")
        gdb.write(f"kmemleak: {len(KMEMLEAK.state.suppressions)} suppression(s)\n")

    @verb(ON)
    def on(self, _opts) -> None:
        KMEMLEAK.enabled = True
        if target.connected() and KMEMLEAK.hooks_wanted:
            KMEMLEAK.install_hooks()
        gdb.write("kmemleak: on\n")

    @verb(OFF)
    def off(self, _opts) -> None:
        KMEMLEAK.enabled = False
        KMEMLEAK.remove_hooks()
        KMEMLEAK.track_module_caches(False)
        periodic().stop()
        gdb.write("kmemleak: off (guest hooks removed)\n")


def periodic_scans(seconds: float) -> None:
    if not seconds:
        periodic().stop()
        gdb.write("kmemleak: periodic scans off\n")
        return
    periodic().start(seconds)
    gdb.write(f"kmemleak: the running guest is interrupted and scanned every {seconds:g} s\n")


def show(opts, since_mark: bool) -> None:
    """The report of the last scan (`kmemleak`, `kmemleak report`, `kmemleak new`)."""
    outcome = _last()
    leaks, suppressed = KMEMLEAK.state.filter(outcome.leaks, since_mark=since_mark)
    if opts.json:
        gdb.write(json.dumps({"leaks": [l.to_json() for l in leaks], "suppressed": suppressed,
                              "objects": len(outcome.snapshot.heap), "notes": outcome.notes,
                              "scan_seconds": outcome.seconds,
                              "heap_findings": [f.to_json() for f in outcome.heap_findings]})
                  + "\n")
        return
    paint = painter()
    for finding in outcome.heap_findings:
        gdb.write(render_heap_finding(finding, paint) + "\n")
    if opts.all:
        text = "\n".join(render_leak(l, paint) for l in leaks)
        gdb.write((text + "\n" if text else "") + f"kmemleak: {len(leaks)} leak(s)\n")
    else:
        gdb.write(render_report(leaks, paint, outcome.notes) + "\n")
    if suppressed:
        gdb.write(f"kmemleak: {suppressed} suppressed\n")


def describe_object(heap, i: int) -> str:
    cache = heap.caches[heap.cache[i]].name if heap.cache[i] >= 0 else KIND_NAMES[int(heap.kind[i])]
    return f"object {int(heap.start[i]):#x} ({cache}, size {int(heap.size[i])})"


def referrers(outcome, i: int) -> list[str]:
    """Every reference to object I found by the last scan; those from unreferenced objects
    (which do not keep it alive) are marked."""
    res = outcome.result
    out = []
    for src, addr in res.referrers(i):
        text = _referrer_text(outcome, src, addr)
        if src >= 0 and not res.gray[src]:
            text += " (itself unreferenced)"
        out.append(text)
    return out


def _referrer_text(outcome, parent: int, addr: int) -> str:
    heap = outcome.snapshot.heap
    if parent < L.NO_PARENT:
        name = outcome.root_names[L.root_index(parent)]
        located = SESSION.symbolizer().lookup(addr) if addr else None
        return f"root {name}" + (f" at {addr:#x}" if addr else "") + (f" ({located})" if located else "")
    off = addr - int(heap.start[parent]) if addr else 0
    return f"{describe_object(heap, parent)}" + (f" at offset {off:#x}" if addr else " (surplus vm_struct reference)")


def reference_chain(outcome, i: int) -> list[str]:
    res, heap = outcome.result, outcome.snapshot.heap
    lines = [describe_object(heap, i)]
    seen = {i}
    while True:
        p = int(res.parent[i])
        if p == L.NO_PARENT:
            lines.append("  <- (min_count 0: always scanned, a root of its own)")
            break
        lines.append("  <- " + _referrer_text(outcome, p, int(res.parent_addr[i])))
        if p < L.NO_PARENT or p in seen:
            break
        seen.add(p)
        i = p
    return lines


def _object_at(prog: str, addr: int):
    """(last scan, heap index) of the object containing ADDR."""
    require_stopped_guest(prog)
    outcome = KMEMLEAK.last or KMEMLEAK.scan()
    i = outcome.snapshot.heap.find(addr)
    if i is None:
        raise gdb.GdbError(f"{prog}: {addr:#x} is not inside a heap object kmemleak tracks "
                           "(slab object, large kmalloc or vmalloc area) at the last scan")
    return outcome, i


def _last():
    if KMEMLEAK.last is None:
        raise gdb.GdbError("kmemleak: no scan yet: stop the guest and run `kmemleak scan`")
    return KMEMLEAK.last


def register() -> None:
    KmemleakCommand()
