"""What a kernel's config must have for kmemgdb, checked before booting a kernel we did not build.

Essentials are what every run needs (DWARF for the extension, the serial console and shell,
the initramfs userland); features each name the options they need, so one message can say
what is missing and which features that turns off, instead of a failure later in the guest.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import KmemgdbError

ESSENTIAL = {
    "CONFIG_64BIT": "x86_64 guest",
    "CONFIG_DEBUG_INFO": "DWARF: kmemgdb reads kernel structures from it",
    "CONFIG_KALLSYMS": "symbols of the kernel's code",
    "CONFIG_SERIAL_8250": "the console and the guest shell are serial lines",
    "CONFIG_SERIAL_8250_CONSOLE": "the kernel console on ttyS0",
    "CONFIG_BLK_DEV_INITRD": "the initramfs with busybox",
    "CONFIG_BINFMT_ELF": "busybox",
    "CONFIG_BINFMT_SCRIPT": "the initramfs' /init script",
    "CONFIG_DEVTMPFS": "/dev in the initramfs",
    "CONFIG_PROC_FS": "/proc in the guest",
    "CONFIG_SYSFS": "/sys in the guest",
}

FEATURES = {
    "modules (insmod, module symbols, kmemcheck's module scope)": ["CONFIG_MODULES",
                                                                   "CONFIG_MODULE_UNLOAD"],
    "host-side kmemleak and kmemcheck (SLUB heap walks)": ["CONFIG_SLUB"],
    "allocation backtraces of slab objects (slub_debug=U)": ["CONFIG_SLUB_DEBUG"],
    "backtraces of large kmallocs and vmalloc areas (page_owner=on)": ["CONFIG_PAGE_OWNER"],
    "kmemleak annotations and the in-kernel reference kmemleak": ["CONFIG_DEBUG_KMEMLEAK"],
    "kmemcheck (a 4 KiB direct map: debug_pagealloc=on)": ["CONFIG_DEBUG_PAGEALLOC"],
    "debugfs (/sys/kernel/debug: module test interfaces)": ["CONFIG_DEBUG_FS"],
}

# What each `kmemgdb run` option needs, by feature name prefix.
NEEDED_BY = {
    "--kmemleak": ("host-side kmemleak",),
    "--kmemcheck": ("host-side kmemleak", "kmemcheck"),
    "--reference-kmemleak": ("kmemleak annotations",),
    "--insmod": ("modules",),
}


class KernelConfigError(KmemgdbError):
    """The kernel lacks what a run needs; the message lists the options."""


@dataclass
class ConfigCheck:
    missing_essential: list[str] = field(default_factory=list)   # "CONFIG_X (why)"
    disabled: dict[str, list[str]] = field(default_factory=dict)  # feature -> missing options

    def essential_lines(self) -> list[str]:
        return ([f"missing, needed by every run: {', '.join(self.missing_essential)}"]
                if self.missing_essential else [])

    def describe(self) -> str:
        return "\n".join(self.essential_lines()
                         + [f"off: {feature}: needs {', '.join(f'{o}=y' for o in options)}"
                            for feature, options in self.disabled.items()])


def enabled(config: dict[str, str], option: str) -> bool:
    return config.get(option, "n") in ("y", "m")


def check_config(config: dict[str, str]) -> ConfigCheck:
    """CONFIG (parse_config of a .config) against ESSENTIAL and FEATURES. A reduced DWARF build
    lacks the structure members kmemgdb reads, so it counts as no DWARF."""
    result = ConfigCheck()
    for option, why in ESSENTIAL.items():
        if not enabled(config, option):
            result.missing_essential.append(f"{option} ({why})")
    if enabled(config, "CONFIG_DEBUG_INFO_REDUCED"):
        result.missing_essential.append("CONFIG_DEBUG_INFO_REDUCED=n (full DWARF: structure members)")
    for feature, options in FEATURES.items():
        missing = [o for o in options if not enabled(config, o)]
        if missing:
            result.disabled[feature] = missing
    return result


def require(check: ConfigCheck, kernel: str, options: list[str]) -> None:
    """Raise KernelConfigError when KERNEL lacks an essential or what one of OPTIONS (the run's
    command-line options, e.g. --kmemcheck) needs."""
    refused = [f"{opt} needs {', '.join(f'{o}=y' for o in check.disabled[feature])} ({feature})"
               for opt in options for prefix in NEEDED_BY.get(opt, ())
               for feature in check.disabled if feature.startswith(prefix)]
    lines = check.essential_lines() + refused
    if lines:
        raise KernelConfigError(f"kernel {kernel} cannot do this run:\n  " + "\n  ".join(lines))
