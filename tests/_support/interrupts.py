"""Fakes and checks for tests that interrupt a pool: hooks, checks and
listeners that raise ``KeyboardInterrupt`` (or anything) on cue, and the
assertion that every connection is accounted for afterwards.

A connection is accounted for when it is idle in the pool, borrowed by
someone who still holds it, or closed; never open and owned by nobody.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from _support.fakes import FakeConn


class Conn(FakeConn):
    """:class:`FakeConn` that counts its resets as ``resets``; ``broken``
    makes its check and reset raise ``ConnectionError``."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    @property
    def resets(self) -> int:
        return self.rollbacks

    def rollback(self) -> None:
        self.rollbacks += 1
        if self.broken:
            raise ConnectionError(f"conn {self.serial}: broken")


class AsyncConn(Conn):
    """The same, with the coroutine methods the asyncio pools await."""

    async def rollback(self) -> None:  # type: ignore[override]
        Conn.rollback(self)

    async def ping(self) -> None:
        self.checks += 1

    async def close(self) -> None:  # type: ignore[override]
        Conn.close(self)


class Adapter:
    """The adapter interface over Conn: reset by rollback, a check that
    counts, broken when told so."""

    def reset_for(self, conn: Conn) -> str:
        return "rollback"

    def check(self, conn: Conn) -> None:
        conn.checks += 1
        if conn.broken:
            raise ConnectionError(f"conn {conn.serial}: check failed")

    def is_broken(self, conn: Conn, exc: BaseException | None = None) -> bool:
        return conn.broken

    def close(self, conn: Conn) -> None:
        conn.close()


class Factory:
    """Makes connections of ``kind`` and keeps every one it made."""

    def __init__(self, kind: type[Conn] = Conn) -> None:
        self.kind = kind
        self.made: list[Conn] = []
        self.lock = threading.Lock()

    def __call__(self) -> Conn:
        conn = self.kind()
        with self.lock:
            self.made.append(conn)
        return conn

    async def connect(self) -> Conn:
        return self()


class Trap:
    """A callable that raises ``exc`` (a fresh one of that type) while armed,
    and counts the calls it raised on; disarmed, it calls ``then``."""

    def __init__(
        self,
        exc: type[BaseException] = KeyboardInterrupt,
        then: Callable[..., Any] | None = None,
    ) -> None:
        self.exc = exc
        self.then = then
        self.armed = False
        self.sprung = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed:
            self.sprung += 1
            raise self.exc(f"trap {self.sprung}")
        if self.then is not None:
            return self.then(*args, **kwargs)
        return None


def accounted(pool: Any, made: list[Conn], held: tuple[Conn, ...] = ()) -> None:
    """Every connection is accounted for: the pool's counts balance, nothing
    is borrowed but ``held``, and every connection ``made`` is idle in the
    pool, held, or closed."""
    from pypool.errors import NotBorrowed

    core = pool._core
    assert core.in_use == len(held), f"in use {core.in_use}, held {len(held)}: one was orphaned"
    assert core.idle + core.in_use + core.claimed + core.connecting == core.size, core
    idle = sys.modules[type(core).__module__].IDLE  # the state, from this pool's core
    for conn in made:
        if conn.closed or any(conn is h for h in held):
            continue
        try:
            state = core.slot_info(core.slot_of(conn))[0]
        except NotBorrowed:
            raise AssertionError(f"{conn!r} is open and owned by nobody") from None
        assert state == idle, f"{conn!r} is in the pool but not idle (state {state})"
