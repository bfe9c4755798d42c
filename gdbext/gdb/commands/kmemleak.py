"""`kmemleak`: the kernel's /sys/kernel/debug/kmemleak interface, run from the debugger."""
from __future__ import annotations

import json

import gdb

from ...core import leaks as L
from ...core.leakreport import (SuppressionError, hex_dump, parse_suppressions,
                                render_heap_finding, render_leak, render_report, suppression_for)
from ...core.heap.model import KIND_NAMES, MIN_COUNT_BLACK
from .. import target
from ..heapctx import guest_context
from ..kmemleak import KMEMLEAK, Describer, jiffies_now, periodic
from ..session import SESSION
from .base import KmemCommand, address, parser, require_stopped_guest
from .kmem import painter

USAGE = """kmemleak                 show the current report (direct leaks, indirect ones counted)
kmemleak scan            scan now (the guest must be stopped)
kmemleak scan=on|off|SECS  periodic scans while the guest runs: interrupt, scan, resume
                         (on: every 600 s, as the kernel's kmemleak thread). After the first
                         one gdb keeps its prompt while the guest runs, as with `continue &`:
                         stop the guest with `interrupt`.
kmemleak report [--all] [--new] [--json]
kmemleak clear           mark every current suspect as reported: only new leaks show
kmemleak mark | new      remember what is allocated now | report only leaks allocated since
kmemleak dump=ADDR       what is known about the object containing ADDR
kmemleak why ADDR        a shortest reference chain from a root to the object
kmemleak stack=on|off    scan task stacks (default on)
kmemleak age=on|off      apply the kernel's rule: unreferenced in two scans and older than 5 s
kmemleak suppress FILE   load suppressions (function=GLOB module=NAME cache=GLOB per line)
kmemleak suppressions [generate|clear]   list them, print entries matching the current
                         report, or drop them all
kmemleak hooks=on|off    watch the kernel's and modules' kmemleak_not_leak/ignore/no_scan/
                         free_part/scan_area/update_trace calls (default on), at each call
                         instruction rather than in the functions (a breakpoint makes QEMU run
                         its whole page slowly, and they share one with kmemleak_alloc/free),
                         and task exits (names of exited tasks). Annotations already seen are
                         kept when off.
kmemleak module-caches=on|off  give every cache a module creates from now on SLUB user
                         tracking (allocation backtraces), as slub_debug=U,NAME would: its
                         kmem_cache_create() call gets SLAB_STORE_USER added (default off)
kmemleak on|off          enable or disable kmemleak (off also removes the hooks)"""


class KmemleakCommand(KmemCommand):
    __doc__ = "Host-side kmemleak: find kernel memory leaks from the debugger.\n\n" + USAGE
    NEEDS_STOPPED_GUEST = False

    def __init__(self):
        super().__init__("kmemleak")

    def run(self, argv: list[str]) -> None:
        if not argv:
            return self.show([])
        verb, _, value = argv[0].partition("=")
        handler = {"scan": self.scan, "report": self.show, "clear": self.clear, "mark": self.mark,
                   "new": lambda a: self.show(["--new"] + a), "dump": self.dump, "why": self.why,
                   "stack": self.stack, "age": self.age, "hooks": self.hooks, "suppress": self.suppress,
                   "module-caches": self.module_caches,
                   "suppressions": self.suppressions, "on": self.on, "off": self.off}.get(verb)
        if handler is None:
            raise gdb.GdbError(f"kmemleak: unknown command {argv[0]!r} (see `help kmemleak`)")
        args = ([value] if value else []) + argv[1:]
        handler(args)

    # -- scanning and reports ----------------------------------------------------------------
    def scan(self, args) -> None:
        if args:
            return self.periodic(args)
        _parse("kmemleak scan", args)
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

    def periodic(self, args) -> None:
        """scan=on (every 600 s, the kernel's default), scan=off, scan=SECS."""
        value = args[0] if len(args) == 1 else ""
        if value == "off":
            periodic().stop()
            gdb.write("kmemleak: periodic scans off\n")
            return
        try:
            seconds = 600.0 if value == "on" else float(value)
        except ValueError:
            seconds = 0.0
        if not seconds > 0:
            raise gdb.GdbError("kmemleak scan: expected scan=on, scan=off or scan=SECONDS")
        periodic().start(seconds)
        gdb.write(f"kmemleak: the running guest is interrupted and scanned every {seconds:g} s\n")

    def show(self, args) -> None:
        p = _parser("kmemleak report")
        p.add_argument("--all", action="store_true", help="list indirect leaks too")
        p.add_argument("--new", action="store_true", help="only leaks allocated since the mark")
        p.add_argument("--json", action="store_true")
        opts = p.parse_args(args)
        outcome = _last()
        leaks, suppressed = KMEMLEAK.state.filter(outcome.leaks, since_mark=opts.new)
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

    def clear(self, args) -> None:
        _parse("kmemleak clear", args)
        KMEMLEAK.state.clear(_last().leaks)
        gdb.write(f"kmemleak: {len(_last().leaks)} suspect(s) marked as reported\n")

    def mark(self, args) -> None:
        _parse("kmemleak mark", args)
        require_stopped_guest("kmemleak mark")
        outcome = KMEMLEAK.scan()
        jiffies = jiffies_now(guest_context())
        KMEMLEAK.state.set_mark(KMEMLEAK.live_objects(), jiffies)
        gdb.write(f"kmemleak: mark set at jiffies {jiffies} ({len(outcome.snapshot.heap)} live "
                  "objects); `kmemleak new` reports leaks allocated after it\n")

    # -- objects ------------------------------------------------------------------------------
    def dump(self, args) -> None:
        addr, outcome, i = _object_at("kmemleak dump", args)
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

    def why(self, args) -> None:
        _, outcome, i = _object_at("kmemleak why", args)
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
    def stack(self, args) -> None:
        KMEMLEAK.stack_scan = _on_off("kmemleak stack", args)
        gdb.write(f"kmemleak: task stacks {'are' if KMEMLEAK.stack_scan else 'are not'} scanned\n")

    def hooks(self, args) -> None:
        KMEMLEAK.hooks_wanted = _on_off("kmemleak hooks", args)
        if KMEMLEAK.hooks_wanted and KMEMLEAK.enabled and target.connected():
            KMEMLEAK.install_hooks()
        elif not KMEMLEAK.hooks_wanted:
            KMEMLEAK.remove_hooks()
        gdb.write(f"kmemleak: annotation hooks {'on' if KMEMLEAK.hooks else 'off'} "
                  f"({len(KMEMLEAK.annotations.calls)} annotation(s) remembered)\n")

    def module_caches(self, args) -> None:
        on = _on_off("kmemleak module-caches", args)
        if on:
            require_stopped_guest("kmemleak module-caches")
        KMEMLEAK.track_module_caches(on)
        gdb.write(f"kmemleak: caches modules create {'get' if on else 'do not get'} SLUB user "
                  "tracking\n")

    def age(self, args) -> None:
        KMEMLEAK.state.age_rule = _on_off("kmemleak age", args)
        gdb.write(f"kmemleak: age rule {'on' if KMEMLEAK.state.age_rule else 'off'}\n")

    def suppress(self, args) -> None:
        opts = _parse("kmemleak suppress", args, ("file",))
        try:
            with open(opts.file) as fh:
                sups = parse_suppressions(fh.read(), opts.file)
        except OSError as exc:
            raise gdb.GdbError(f"kmemleak suppress: {exc.strerror}: {opts.file}") from None
        except SuppressionError as exc:
            raise gdb.GdbError(f"kmemleak suppress: {exc}") from None
        KMEMLEAK.state.suppressions += sups
        gdb.write(f"kmemleak: {len(sups)} suppression(s) loaded from {opts.file}\n")

    def suppressions(self, args) -> None:
        if args == ["clear"]:
            KMEMLEAK.state.suppressions = []
            gdb.write("kmemleak: suppressions cleared\n")
            return
        if args and args[0] == "generate":
            leaks, _ = KMEMLEAK.state.filter(_last().leaks)
            lines = {suppression_for(l).line() for l in leaks if l.kind == "direct"}
            gdb.write("".join(f"{line}\n" for line in sorted(lines)))
            return
        _parse("kmemleak suppressions", args)
        for s in KMEMLEAK.state.suppressions:
            gdb.write(s.line() + "\n")
        gdb.write(f"kmemleak: {len(KMEMLEAK.state.suppressions)} suppression(s)\n")

    def on(self, args) -> None:
        _parse("kmemleak on", args)
        KMEMLEAK.enabled = True
        if target.connected() and KMEMLEAK.hooks_wanted:
            KMEMLEAK.install_hooks()
        gdb.write("kmemleak: on\n")

    def off(self, args) -> None:
        _parse("kmemleak off", args)
        KMEMLEAK.enabled = False
        KMEMLEAK.remove_hooks()
        KMEMLEAK.track_module_caches(False)
        periodic().stop()
        gdb.write("kmemleak: off (guest hooks removed)\n")


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


def _object_at(prog: str, args: list[str]):
    """(address, last scan, heap index) for commands that take an address inside an object."""
    opts = _parse(prog, args, ("addr",))
    require_stopped_guest(prog)
    outcome = KMEMLEAK.last or KMEMLEAK.scan()
    i = outcome.snapshot.heap.find(opts.addr)
    if i is None:
        raise gdb.GdbError(f"{prog}: {opts.addr:#x} is not inside a heap object kmemleak tracks "
                           "(slab object, large kmalloc or vmalloc area) at the last scan")
    return opts.addr, outcome, i


def _last():
    if KMEMLEAK.last is None:
        raise gdb.GdbError("kmemleak: no scan yet: stop the guest and run `kmemleak scan`")
    return KMEMLEAK.last


def _parser(prog: str):
    return parser(prog, prog)


def _parse(prog: str, args: list[str], positional: tuple[str, ...] = ()):
    p = _parser(prog)
    for name in positional:
        p.add_argument(name, type=address if name == "addr" else str)
    return p.parse_args(args)


def _on_off(prog: str, args: list[str]) -> bool:
    if len(args) != 1 or args[0] not in ("on", "off"):
        raise gdb.GdbError(f"{prog}: expected on or off, as in `{prog}=on`")
    return args[0] == "on"


def register() -> None:
    KmemleakCommand()
