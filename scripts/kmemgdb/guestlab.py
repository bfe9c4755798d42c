"""A booted guest with gdb attached: the one setup shared by `kmemgdb run`, the demo and tests."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from qemu.argv import GuestSpec
from qemu.guest import Guest

from .gdbdriver import GdbSession
from .initramfs import ensure_initramfs
from .kernel import KernelBuild, ensure_kernel


@dataclass
class LabOptions:
    modules: list[Path] = field(default_factory=list)   # .ko files put into /modules/
    memory_mib: int = 256
    smp: int = 1
    append: list[str] = field(default_factory=list)
    boot_timeout: float = 120
    kernel: KernelBuild | None = None     # None: ours, built (or found in the cache) first


@dataclass
class Lab:
    kernel: KernelBuild
    guest: Guest
    gdb: GdbSession

    def run(self, command: str, timeout: float = 60) -> tuple[str, int]:
        """Run a shell command in the guest while gdb has the guest running; WatchdogFired
        when kmemcheck's watchdog stops the guest meanwhile."""
        return self.guest.run(command, timeout, watch=self.gdb.check_watchdog)


def prepare(options: LabOptions) -> tuple[KernelBuild, Path]:
    kernel = options.kernel or ensure_kernel()
    initrd = ensure_initramfs([*kernel.sample_modules(), *options.modules])
    return kernel, initrd


@contextlib.contextmanager
def booted(options: LabOptions, workdir: Path) -> Iterator[Lab]:
    """Boot the guest paused, attach gdb (extension loaded, RAM file set), let it run to its
    shell. Yields with the guest running; QEMU and gdb are ended by pid on the way out."""
    kernel, initrd = prepare(options)
    spec = GuestSpec(kernel.bzimage, initrd, memory_mib=options.memory_mib, smp=options.smp,
                     append=list(options.append))
    module_dirs = [kernel.build_dir] + sorted({m.resolve().parent for m in options.modules})
    with Guest(spec, workdir, paused=True) as guest:
        with GdbSession(kernel.vmlinux, guest.ram_path, module_dirs,
                        log_path=workdir / "gdb.log", shell_socket=guest.broker_socket) as gdb:
            gdb.pause_guest = guest.pause
            gdb.connect(guest.port)   # the prompt after it installs the module hooks
            gdb.cont()
            guest.wait_ready(options.boot_timeout)
            yield Lab(kernel, guest, gdb)
