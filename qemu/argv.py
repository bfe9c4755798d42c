"""Build QEMU's command line for a kmemgdb guest (pure: no processes started here)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# no_hash_pointers: reports printed by the guest (oopses, the in-kernel kmemleak) show real
# addresses; a TCG guest often has no entropy yet and would print "(____ptrval____)".
# i8042.noaux: no PS/2 mouse probe (a late, slow one under TCG).
# panic=0: a panicking kernel stays where it is instead of rebooting (QEMU runs with -no-reboot
# and would exit): its memory is intact, and a run still scans it after the console says so.
BASE_CMDLINE = ["console=ttyS0", "nokaslr", "panic=0", "no_hash_pointers", "i8042.noaux"]


@dataclass
class GuestSpec:
    """What to boot and how. memory_mib and smp default to the issue's 256 MiB and one vCPU."""
    kernel: Path
    initrd: Path
    memory_mib: int = 256
    smp: int = 1
    append: list[str] = field(default_factory=list)
    accel: str = "auto"          # auto | tcg | kvm
    machine: str = "pc"
    qemu: str = "qemu-system-x86_64"

    def cmdline(self) -> str:
        return " ".join(BASE_CMDLINE + self.append)


def kvm_usable(cpuinfo: str | None = None) -> bool:
    """KVM only where /dev/kvm opens and the CPU really has vmx/svm (these machines do not)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError:
        return False
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split()}
    return bool(flags & {"vmx", "svm"})


def qemu_argv(spec: GuestSpec, gdb_port: int, ram_path: str, paused: bool, kvm: bool,
              shell_socket: str, qmp_socket: str) -> list[str]:
    """argv for QEMU: gdbstub on 127.0.0.1:GDB_PORT, RAM shared through RAM_PATH, the kernel
    console (ttyS0) on stdio and the guest shell's serial line (ttyS1) on the unix socket
    SHELL_SOCKET. Two lines because the kernel prints whenever it likes: on one line its
    messages land in the middle of command output. QMP on QMP_SOCKET, to pause the guest when
    a Ctrl-C sent by the debugger was lost (see Guest.pause)."""
    mem = f"{spec.memory_mib}M"
    argv = [
        spec.qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-machine", f"{spec.machine},memory-backend=ram0",
        "-object", f"memory-backend-file,id=ram0,size={mem},mem-path={ram_path},share=on",
        "-m", mem, "-smp", str(spec.smp),
        "-accel", "kvm" if kvm else "tcg",
        "-kernel", str(spec.kernel), "-initrd", str(spec.initrd), "-append", spec.cmdline(),
        "-chardev", "stdio,id=con0,signal=off", "-serial", "chardev:con0",
        "-chardev", f"socket,id=sh0,path={shell_socket},server=on,wait=off", "-serial", "chardev:sh0",
        "-monitor", "none", "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        "-gdb", f"tcp:127.0.0.1:{gdb_port}",
    ]
    # ERMS makes the kernel's memcpy/memset/copy_*_user use `rep movsb/stosb` (TCG runs them
    # fine): kmemcheck completes such a copy in one stop and moves the shadow with the bytes.
    argv += ["-cpu", "host" if kvm else "qemu64,+erms"]
    if paused:
        argv.append("-S")
    return argv
