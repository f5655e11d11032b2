"""Stand-in connections, adapters and factories, and the fixtures that build
pools over them on the core under test.

Two fixtures, two levels, two names:

* ``make_core_pool``: a bare core (``CorePool``) whose slots are filled with
  fake connections, for the core's own tests;
* ``make_pool``: a ``pypool.Pool`` over a :class:`Factory` of
  :class:`FakeConn` and a :class:`FakeAdapter`, for the policy layer's.

A plugin of the test suite (``pytest_plugins`` in ``conftest.py``), so the
fixtures are found by name; the classes are imported from here.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from pypool import Pool

__all__ = (
    "CONN_TYPES",
    "AsyncFactory",
    "AsyncFakeAdapter",
    "AsyncFakeConn",
    "Factory",
    "FakeAdapter",
    "FakeConn",
    "FakeError",
    "NoWeakConn",
    "NullAdapter",
    "new_bytearray",
)

_serials = itertools.count()


class FakeError(Exception):
    """What the fakes raise when told to fail."""


# ------------------------------------------------------------------ threads


class FakeConn:
    """A connection that counts what is done to it: a plain class, so it
    allows weak references (the core holds a borrowed one weakly).

    ``serial`` is its number (a :class:`Factory` numbers its connections from
    0 in creation order; otherwise one from a global count); ``thread`` the
    thread that made it. ``fail_reset`` makes ``rollback()`` raise,
    ``fail_check`` makes :class:`FakeAdapter` find it broken.
    """

    def __init__(self, serial: int | None = None) -> None:
        self.serial = next(_serials) if serial is None else serial
        self.name = f"conn{self.serial}"
        self.thread = threading.current_thread()
        self.rollbacks = 0
        self.checks = 0
        self.closes = 0
        self.configured = 0
        self.fail_reset = False
        self.fail_check = False

    def rollback(self) -> None:
        self.rollbacks += 1
        if self.fail_reset:
            raise FakeError(f"conn {self.serial}: rollback failed")

    def close(self) -> None:
        self.closes += 1

    @property
    def closed(self) -> bool:
        return self.closes > 0

    def __repr__(self) -> str:
        return f"<FakeConn {self.serial}{' closed' if self.closed else ''}>"


class NoWeakConn:
    """A stand-in connection that allows neither weak references nor new
    attributes (like some C-implemented driver connections): the core must
    hold a borrowed one strongly."""

    __slots__ = ()


def new_bytearray() -> bytearray:
    """A builtin object without weak references or attributes. Every empty
    bytearray equals every other one and none is hashable: the core must key
    by identity."""
    return bytearray()


#: Each kind of connection object the core must support (fixture ``conn_type``).
CONN_TYPES: dict[str, Callable[[], Any]] = {
    "FakeConn": FakeConn,
    "NoWeakConn": NoWeakConn,
    "bytearray": new_bytearray,
}


class FakeAdapter:
    """The adapter interface over :class:`FakeConn`: reset by
    ``conn.rollback()``, checked by counting (broken once closed or told to
    fail). ``reset_plans`` counts the resets it was asked for."""

    def __init__(self) -> None:
        self.reset_plans = 0

    def reset_for(self, conn: FakeConn) -> str:
        self.reset_plans += 1
        return "rollback"

    def check(self, conn: FakeConn) -> None:
        conn.checks += 1
        if conn.fail_check or conn.closed:
            raise FakeError(f"conn {conn.serial}: server closed the connection")

    def is_broken(self, conn: FakeConn, exc: BaseException | None = None) -> bool:
        return conn.closed or conn.fail_check

    def close(self, conn: FakeConn) -> None:
        conn.close()


class NullAdapter:
    """The least a pool needs from an adapter, for objects that are not
    connections: no reset, nothing to check, never broken, nothing to close."""

    def reset_for(self, conn: Any) -> None:
        return None

    def check(self, conn: Any) -> None:
        pass

    def is_broken(self, conn: Any, exc: BaseException | None = None) -> bool:
        return False

    def close(self, conn: Any) -> None:
        pass


class _Counting:
    """What both fake factories count and keep (see :class:`Factory`)."""

    def __init__(
        self,
        delay: float = 0.0,
        fail: BaseException | None = None,
        on_call: Callable[[], object] | None = None,
        keep: bool = True,
    ) -> None:
        self.lock = threading.Lock()
        self.delay = delay
        self.fail = fail
        self.on_call = on_call
        self.keep = keep
        self.made = 0
        self.conns: list[Any] = []
        self.threads: set[threading.Thread] = set()
        self.calls = 0
        self.active = 0
        self.peak_active = 0

    def _begin(self) -> None:
        with self.lock:
            self.calls += 1
            self.active += 1
            self.peak_active = max(self.peak_active, self.active)
            self.threads.add(threading.current_thread())
        if self.on_call is not None:
            self.on_call()

    def _make(self, conn_type: Callable[[int], Any]) -> Any:
        if self.fail is not None:
            raise self.fail
        with self.lock:
            conn = conn_type(self.made)
            self.made += 1
            if self.keep:
                self.conns.append(conn)
        return conn

    def _end(self) -> None:
        with self.lock:
            self.active -= 1

    @property
    def closed(self) -> list[Any]:
        return [c for c in self.conns if c.closed]


class Factory(_Counting):
    """Makes :class:`FakeConn` numbered from 0; records the threads it runs
    on and how many calls run at once, and can be made slow (``delay``) or
    failing (``fail``, also settable later). ``on_call()`` runs at the start
    of each call. ``made`` counts the connections made; ``conns`` holds them,
    unless ``keep`` is false (then a borrowed one that is dropped can be
    garbage-collected)."""

    conns: list[FakeConn]

    def __call__(self) -> FakeConn:
        try:
            self._begin()
            if self.delay:
                time.sleep(self.delay)
            conn: FakeConn = self._make(FakeConn)
            return conn
        finally:
            self._end()


# ------------------------------------------------------------------ asyncio


class AsyncFakeConn:
    """An asyncio connection that counts what is done to it: async rollback
    (the generic reset), ping and close. ``fail_reset`` makes ``rollback()``
    raise, ``fail_check`` makes :class:`AsyncFakeAdapter` find it broken, as
    for :class:`FakeConn`."""

    def __init__(self, serial: int | None = None) -> None:
        self.serial = next(_serials) if serial is None else serial
        self.rollbacks = 0
        self.checks = 0
        self.closes = 0
        self.fail_reset = False
        self.fail_check = False

    async def rollback(self) -> None:
        await asyncio.sleep(0)
        self.rollbacks += 1
        if self.fail_reset:
            raise FakeError(f"conn {self.serial}: rollback failed")

    async def ping(self) -> None:
        await asyncio.sleep(0)

    async def close(self) -> None:
        await asyncio.sleep(0)
        self.closes += 1

    @property
    def closed(self) -> bool:
        return self.closes > 0

    def __repr__(self) -> str:
        return f"<AsyncFakeConn {self.serial}>"


class AsyncFakeAdapter:
    """The adapter interface over :class:`AsyncFakeConn`, with coroutine
    check and close."""

    def reset_for(self, conn: AsyncFakeConn) -> str:
        return "rollback"

    async def check(self, conn: AsyncFakeConn) -> None:
        conn.checks += 1
        await asyncio.sleep(0)
        if conn.fail_check or conn.closed:
            raise FakeError(f"conn {conn.serial}: server closed the connection")

    def is_broken(self, conn: AsyncFakeConn, exc: BaseException | None = None) -> bool:
        return conn.closed or conn.fail_check

    async def close(self, conn: AsyncFakeConn) -> None:
        await conn.close()


class AsyncFactory(_Counting):
    """An async factory of :class:`AsyncFakeConn` numbered from 0, or raises
    ``fail`` when it is set; as :class:`Factory`, it can be made slow
    (``delay``), runs ``on_call()`` at the start of each call and counts how
    many calls run at once (``active``, ``peak_active``). ``calls`` counts
    the calls, ``made`` the connections; ``conns`` holds them, unless
    ``keep`` is false."""

    conns: list[AsyncFakeConn]

    def __init__(
        self,
        keep: bool = True,
        delay: float = 0.0,
        on_call: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(delay=delay, on_call=on_call, keep=keep)

    async def __call__(self) -> AsyncFakeConn:
        try:
            self._begin()
            await asyncio.sleep(self.delay)
            conn: AsyncFakeConn = self._make(AsyncFakeConn)
            return conn
        finally:
            self._end()


# ------------------------------------------------------------------ fixtures


@pytest.fixture(params=list(CONN_TYPES), ids=list(CONN_TYPES))
def conn_type(request: pytest.FixtureRequest) -> Callable[[], Any]:
    """Each kind of connection object the core must support."""
    return CONN_TYPES[request.param]


@pytest.fixture
def make_core_pool(CorePool: type) -> Iterator[Callable[..., tuple[Any, list[Any]]]]:
    """``make_core_pool(max_size, n_filled=max_size, conn_type=FakeConn, **kw)``.

    Makes a core (``CorePool(max_size, **kw)`` of the core under test),
    reserves and fills ``n_filled`` slots with new objects made by
    ``conn_type()``, and returns ``(core, conns)``; ``conns[i]`` sits in
    slot ``i``. Every core made is closed at the end of the test.
    """
    pools: list[Any] = []

    def make(
        max_size: int = 4,
        n_filled: int | None = None,
        conn_type: Callable[[], Any] | None = None,
        **kw: Any,
    ) -> tuple[Any, list[Any]]:
        pool = CorePool(max_size, **kw)
        pools.append(pool)
        factory = FakeConn if conn_type is None else conn_type
        conns = []
        for _ in range(max_size if n_filled is None else n_filled):
            slot = pool.reserve()
            assert slot is not None
            conn = factory()
            pool.fill(slot, conn)
            conns.append(conn)
        return pool, conns

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture
def make_pool(core_module: ModuleType) -> Iterator[Callable[..., tuple[Any, Factory]]]:
    """``make_pool(factory=None, **kw) -> (pool, factory)``: a
    ``pypool.Pool`` on the core under test, over a new :class:`Factory`
    unless one is given, with a :class:`FakeAdapter` and a 5 s timeout unless
    ``kw`` says otherwise; every pool made is closed at the end."""
    pools: list[Any] = []

    def make(factory: Any = None, **kw: Any) -> tuple[Any, Factory]:
        factory = Factory() if factory is None else factory
        kw.setdefault("adapter", FakeAdapter())
        kw.setdefault("timeout", 5.0)
        pool = Pool.with_core(core_module)(factory, **kw)
        pools.append(pool)
        return pool, factory

    yield make
    for pool in pools:
        pool.close(timeout=2.0)
