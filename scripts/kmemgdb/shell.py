"""`kmemgdb shell`: the guest shell of a running kmemgdb session on this terminal.

Connects to the shell broker of a `kmemgdb gdb` (or `run`, or a test) started by this user:
the guest's output comes here, keystrokes go to the guest. Ctrl-] ends, as in telnet.
"""
from __future__ import annotations

import contextlib
import glob
import os
import select
import socket
import sys
import tempfile
import termios
import tty

from qemu.guest import BROKER_NAME, pid_alive

from .errors import KmemgdbError

ESCAPE = b"\x1d"         # Ctrl-]


def sessions(tmp_dir: str | None = None) -> dict[int, str]:
    """{launcher pid: broker socket} of the running sessions."""
    found = {}
    for path in glob.glob(os.path.join(tmp_dir or tempfile.gettempdir(), "kmemgdb-*.tty")):
        m = BROKER_NAME.fullmatch(os.path.basename(path))
        if m and pid_alive(int(m.group(1))):
            found[int(m.group(1))] = path
    return found


def choose(found: dict[int, str], pid: int | None) -> str:
    if pid is not None:
        if pid not in found:
            raise KmemgdbError(f"shell: no kmemgdb session {pid} (running: "
                               f"{', '.join(map(str, sorted(found))) or 'none'})")
        return found[pid]
    if not found:
        raise KmemgdbError("shell: no kmemgdb session is running (start one: kmemgdb gdb)")
    if len(found) > 1:
        raise KmemgdbError(f"shell: {len(found)} sessions run ({', '.join(map(str, sorted(found)))}):"
                           " choose one with --session PID")
    return next(iter(found.values()))


def shell(pid: int | None) -> int:
    path = choose(sessions(), pid)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        raise KmemgdbError(f"shell: cannot connect to {path}: {exc.strerror}") from None
    interactive = sys.stdin.isatty()
    if interactive:
        print("kmemgdb shell: the guest's shell; it answers while the guest runs (`continue` or "
              "`guest ...` at the gdb prompt). Ctrl-] ends.\r", flush=True)
    with sock, (_raw(sys.stdin.fileno()) if interactive else contextlib.nullcontext()):
        _relay(sock, sys.stdin.fileno(), sys.stdout.fileno(), interactive)
    return 0


@contextlib.contextmanager
def _raw(fd: int):
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _relay(sock: socket.socket, stdin: int, stdout: int, interactive: bool) -> None:
    """Copy both ways until Ctrl-] (a terminal), the end of stdin (a pipe), or the session ends."""
    sources = [sock, stdin]
    while sources:
        ready, _, _ = select.select(sources, [], [], None if stdin in sources else 2.0)
        if not ready:                    # stdin ended and the guest said nothing for 2 s
            return
        if sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            os.write(stdout, data)
        if stdin in ready:
            data = os.read(stdin, 4096)
            if interactive and ESCAPE in data:
                sock.sendall(data[:data.index(ESCAPE)])
                return
            if not data:
                sources.remove(stdin)
                continue
            sock.sendall(data)
