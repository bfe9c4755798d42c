"""Share the guest shell with other processes: gdb's `guest` command, `kmemgdb shell`.

QEMU's socket chardev takes one client at a time, and the launcher is that client (it logs the
shell and runs `kmemgdb run`'s steps). The broker listens on a unix socket of its own: what
the guest prints goes to every client, what a client sends goes to the guest, like a terminal
shared by several people.
"""
from __future__ import annotations

import os
import socket
import threading
from typing import Callable

SEND_TIMEOUT = 5.0      # a client that reads nothing that long is dropped, not waited for


class ShellBroker:
    def __init__(self, path: str, write_to_guest: Callable[[bytes], None]):
        self.path = path
        self._write = write_to_guest
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        os.chmod(path, 0o600)           # the guest's root shell: the owner only
        self._server.listen(8)
        self._server.settimeout(0.5)
        self._thread = threading.Thread(target=self._accept, name="shell-broker", daemon=True)
        self._thread.start()

    def broadcast(self, data: bytes) -> None:
        """What the guest printed, to every client."""
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            try:
                client.sendall(data)
            except OSError:
                self._drop(client)

    def close(self) -> None:
        self._done.set()
        self._thread.join(2)
        self._server.close()
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _accept(self) -> None:
        while not self._done.is_set():
            try:
                client, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(SEND_TIMEOUT)
            with self._lock:
                self._clients.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        """What one client types, to the guest, until it hangs up."""
        while not self._done.is_set():
            try:
                data = client.recv(4096)
            except socket.timeout:      # the timeout is there for sends
                continue
            except OSError:
                break
            if not data:
                break
            try:
                self._write(data)
            except Exception:           # the guest is gone: nothing more to relay
                break
        self._drop(client)

    def _drop(self, client: socket.socket) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
        client.close()
