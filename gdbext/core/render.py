"""Plain-text rendering helpers shared by every report; color comes from pygments' ANSI table."""
from __future__ import annotations

from pygments.console import colorize

from .kernel import KernelInfo
from .paging import Translation, flag_names, Entry


class Painter:
    """Colors text when enabled; a no-op otherwise (tests, NO_COLOR, pipes)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, color: str, text: str) -> str:
        return colorize(color, text) if self.enabled else text


def size_text(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def table(rows: list[tuple[str, str]], paint: Painter) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{paint('teal', k.ljust(width))}  {v}" for k, v in rows)


def render_info(info: KernelInfo, ram_mapping: str, paint: Painter) -> str:
    mods = ", ".join(m.name for m in info.modules) or "none"
    rows = [
        ("kernel release", info.release),
        ("command line", info.cmdline),
        ("memory total", f"{info.totalram_bytes // 1024} kB (MemTotal)"),
        ("physical RAM", f"{size_text(info.physical_ram_bytes)} (max_pfn)"),
    ]
    rows += [(name, f"{value:#x} ({source})") for name, (value, source) in info.bases.items()]
    rows += [
        ("slab caches", str(info.slab_caches)),
        ("modules", f"{len(info.modules)}: {mods}"),
        ("host RAM mapping", ram_mapping),
    ]
    return table(rows, paint)


def render_translation(t: Translation, paint: Painter) -> str:
    rows = [
        ("virtual", f"{t.vaddr:#x}"),
        ("physical", paint("green", f"{t.paddr:#x}")),
        ("page size", size_text(t.page_size)),
        (f"{t.leaf.name} flags", " ".join(t.flags)),
        (f"{t.leaf.name} value", f"{t.leaf.value:#018x}"),
        (f"{t.leaf.name} location", f"physical {t.leaf.paddr:#x}"),
    ]
    return table(rows, paint)


def render_entry(vaddr: int, entry: Entry, hidden_by_us: bool, paint: Painter) -> str:
    state = "present" if entry.present else ("hidden by kmemgdb" if hidden_by_us else "not present")
    return (f"page {vaddr & ~0xFFF:#x}: {entry.name} {entry.value:#018x} at physical "
            f"{entry.paddr:#x} [{' '.join(flag_names(entry.value)) or '-'}] {paint('yellow', state)}")
