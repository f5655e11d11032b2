"""A TCP proxy that a test cuts silently (``cut()``): bytes stop flowing both
ways while every socket stays open, as on a network that drops packets.
Used by the pool health tests and the asyncio tests; :mod:`faultproxy` is
the fuller proxy (black holes for new or existing connections, refusal).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

__all__ = ("BlackHoleProxy",)


class BlackHoleProxy:
    """A TCP proxy on 127.0.0.1:<free port> forwarding to ``target``.

    ``cut()`` stops forwarding without closing anything: bytes read from
    either side are dropped (they just vanish), and a connection accepted
    while cut is never forwarded (its bytes vanish too, forever). The
    sockets stay open, so neither side sees an error: only a timeout can
    tell. ``restore()`` forwards again.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port: int = self.listener.getsockname()[1]
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self.dropped = 0
        self._spawn(self._accept_loop)

    def cut(self) -> None:
        self._cut.set()

    def restore(self) -> None:
        self._cut.clear()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="proxy")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            if not select.select([self.listener], [], [], 0.05)[0]:
                continue
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._keep(client)
            if self._cut.is_set():
                self._spawn(self._pump, client, None)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._keep(upstream)
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket | None) -> None:
        """Copies ``src`` to ``dst``; drops everything while cut, and for
        ever when there is no ``dst``."""
        try:
            while not self._stop.is_set():
                if not select.select([src], [], [], 0.05)[0]:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                if dst is None or self._cut.is_set():
                    self.dropped += len(data)
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(2.0)
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()
