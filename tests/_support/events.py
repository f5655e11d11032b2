"""A listener that records a pool's events, for ``Pool`` and ``AsyncPool`` alike."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from _support.fakes import AsyncFakeConn, FakeConn
from pypool.pool import EVENTS


def C(conn: FakeConn | AsyncFakeConn) -> tuple[str, int]:
    """A connection as recorded: by serial number (holding it would keep an
    abandoned one alive)."""
    return ("conn", conn.serial)


class Recorder:
    """Listens to ``events`` of ``pool`` (a pool, or a facade of
    ``_support.pools``) and records ``(event, args)``, with connections by
    serial; checkin and reset also record the connection's rollbacks at that
    moment (was the reset done yet?)."""

    def __init__(self, pool: Any, events: Iterable[str] = tuple(EVENTS)) -> None:
        self.pool = getattr(pool, "raw", pool)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.other_pool = 0  # listener calls whose first argument was not the pool
        self.lock = threading.Lock()  # a sync pool's listeners run on its threads
        self.listeners: dict[str, Callable[..., None]] = {}
        for event in events:
            self.listeners[event] = self._listener(event)
            self.pool.add_listener(event, self.listeners[event])

    def _listener(self, event: str) -> Callable[..., None]:
        def listener(pool: Any, *args: Any) -> None:
            if pool is not self.pool:
                self.other_pool += 1
            snapshot: tuple[Any, ...] = tuple(
                C(a) if isinstance(a, (FakeConn, AsyncFakeConn)) else a for a in args
            )
            if event in ("checkin", "reset") and args:
                snapshot = (*snapshot, args[0].rollbacks)
            with self.lock:
                self.calls.append((event, snapshot))

        return listener

    def of(self, event: str) -> list[tuple[Any, ...]]:
        with self.lock:
            return [args for e, args in self.calls if e == event]
