"""Run one psycopg pool scenario on psycopg_pool and on pypool.psycopg, sync or async.

A scenario is written once, as async code, against thin facades: every pool
or connection method is awaited, and the facade calls the sync pool's method
(``ConnectionPool``, ``NullConnectionPool``) or awaits the async pool's
(``AsyncConnectionPool``, ``AsyncNullConnectionPool``). Concurrent actors
(:meth:`Matrix.spawn`) are tasks on the scenario's loop for the async pools
and threads, each with its own loop, for the sync ones. The matrix is
{psycopg_pool, pypool native, pypool python} x {sync, async} x {pool, null
pool}; :func:`matrix` turns a scenario into a test over the cells it applies
to.

pypool's core is chosen in one place, :func:`make_pool`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import psycopg
import psycopg_pool
import pytest

import pypool.psycopg
from _support.pools import drive

#: Generous bound for things that happen "soon" (a connect, a background return).
SOON = 10.0

IMPLS = ("psycopg_pool", "native", "python")
PYPOOL = ("native", "python")
FLAVOURS = ("sync", "async")
KINDS = ("pool", "null")

_CLASSES = {
    ("sync", "pool"): "ConnectionPool",
    ("sync", "null"): "NullConnectionPool",
    ("async", "pool"): "AsyncConnectionPool",
    ("async", "null"): "AsyncNullConnectionPool",
}


def make_pool(cls: type, core: ModuleType | None, *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)``, on pypool's ``core`` when one is given: the
    one place the tests choose a pypool core for a psycopg pool."""
    if core is not None:
        cls = cls.with_core(core)  # type: ignore[attr-defined]
    return cls(*args, **kwargs)


def core_of(impl: str) -> ModuleType | None:
    """None for psycopg_pool; pypool's core module otherwise (skips when the
    native core cannot load, as the core tests do)."""
    from _support.cores import PYTHON_MODULE, import_native_core

    if impl == "psycopg_pool":
        return None
    if impl == "native":
        return import_native_core()
    return importlib.import_module(PYTHON_MODULE)


async def maybe(value: Any) -> Any:
    """``await value`` if it is awaitable, else ``value``."""
    if inspect.isawaitable(value):
        return await value
    return value


# ------------------------------------------------------------------ facades


class Conn:
    """A psycopg connection (``Connection`` or ``AsyncConnection``), awaited
    alike. Attributes not defined here are the connection's own."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    async def execute(self, sql: Any, params: Any = None) -> None:
        await maybe(self.raw.execute(sql, params))

    async def one(self, sql: Any, params: Any = None) -> Any:
        """The first column of the first row of ``sql``."""
        cur = await maybe(self.raw.execute(sql, params))
        row = await maybe(cur.fetchone())
        return None if row is None else row[0]

    async def commit(self) -> None:
        await maybe(self.raw.commit())

    async def rollback(self) -> None:
        await maybe(self.raw.rollback())

    async def close(self) -> None:
        await maybe(self.raw.close())

    async def set_autocommit(self, value: bool) -> None:
        if isinstance(self.raw, psycopg.AsyncConnection):
            await self.raw.set_autocommit(value)
        else:
            self.raw.autocommit = value

    @property
    def status(self) -> psycopg.pq.TransactionStatus:
        return psycopg.pq.TransactionStatus(self.raw.pgconn.transaction_status)

    @property
    def pid(self) -> int:
        return int(self.raw.info.backend_pid)


def raw(conn: Any) -> Any:
    return conn.raw if isinstance(conn, Conn) else conn


class Pool:
    """A psycopg pool, sync or async, awaited alike. Attributes not defined
    here (properties, ``get_stats``, ``name``...) are the pool's own."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "raw":
            object.__setattr__(self, name, value)
        else:
            setattr(self.raw, name, value)

    async def open(self, *args: Any, **kwargs: Any) -> None:
        await maybe(self.raw.open(*args, **kwargs))

    async def close(self, *args: Any, **kwargs: Any) -> None:
        await maybe(self.raw.close(*args, **kwargs))

    async def wait(self, *args: Any, **kwargs: Any) -> None:
        await maybe(self.raw.wait(*args, **kwargs))

    async def getconn(self, *args: Any, **kwargs: Any) -> Conn:
        return Conn(await maybe(self.raw.getconn(*args, **kwargs)))

    async def putconn(self, conn: Any) -> None:
        await maybe(self.raw.putconn(raw(conn)))

    async def resize(self, *args: Any, **kwargs: Any) -> None:
        await maybe(self.raw.resize(*args, **kwargs))

    async def check(self) -> None:
        await maybe(self.raw.check())

    async def drain(self) -> None:
        await maybe(self.raw.drain())

    async def check_connection(self, conn: Any) -> None:
        await maybe(self.raw.check_connection(raw(conn)))

    @contextlib.asynccontextmanager
    async def connection(self, *args: Any, **kwargs: Any) -> AsyncIterator[Conn]:
        block = self.raw.connection(*args, **kwargs)
        if hasattr(block, "__aenter__"):
            async with block as conn:
                yield Conn(conn)
        else:
            with block as conn:
                yield Conn(conn)

    @contextlib.asynccontextmanager
    async def as_context(self) -> AsyncIterator[Pool]:
        """``with pool:`` / ``async with pool:``."""
        if hasattr(self.raw, "__aenter__"):
            async with self.raw:
                yield self
        else:
            with self.raw:
                yield self


# ------------------------------------------------------------------ the matrix


@dataclass(frozen=True)
class Cell:
    impl: str  # "psycopg_pool", "native", "python"
    flavour: str  # "sync", "async"
    kind: str  # "pool", "null"

    @property
    def id(self) -> str:
        impl = self.impl if self.impl == "psycopg_pool" else f"pypool-{self.impl}"
        return f"{impl}-{self.flavour}-{self.kind}"


class Matrix:
    """What a scenario gets: the cell it runs in and a pool maker.

    ``await m.pool(...)`` makes a pool of the cell's class (``open=False``
    unless given) and opens it with ``open()``; ``m.new(...)`` only makes
    it. Every pool made is closed when the scenario ends.
    """

    def __init__(self, cell: Cell, dsn: str, request: pytest.FixtureRequest) -> None:
        self.cell = cell
        self.dsn = dsn
        self.request = request
        self.core = core_of(cell.impl)
        self.made: list[Pool] = []

    # -- what the cell is
    @property
    def is_async(self) -> bool:
        return self.cell.flavour == "async"

    @property
    def is_null(self) -> bool:
        return self.cell.kind == "null"

    @property
    def is_pypool(self) -> bool:
        return self.cell.impl != "psycopg_pool"

    @property
    def mod(self) -> ModuleType:
        """``psycopg_pool`` or ``pypool.psycopg``: the error classes."""
        return psycopg_pool if self.cell.impl == "psycopg_pool" else pypool.psycopg

    @property
    def cls(self) -> type:
        return getattr(self.mod, _CLASSES[(self.cell.flavour, self.cell.kind)])  # type: ignore[no-any-return]

    @property
    def connection_class(self) -> type:
        return psycopg.AsyncConnection if self.is_async else psycopg.Connection

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    # -- pools
    def construct(self, *args: Any, **kwargs: Any) -> Any:
        """The pool class called as given (no default added), not tracked."""
        return make_pool(self.cls, self.core, *args, **kwargs)

    def new(self, *args: Any, **kwargs: Any) -> Pool:
        if not args:
            args = (self.dsn,)
        kwargs.setdefault("open", False)
        pool = Pool(self.construct(*args, **kwargs))
        self.made.append(pool)
        return pool

    async def pool(self, *args: Any, **kwargs: Any) -> Pool:
        pool = self.new(*args, **kwargs)
        await pool.open()
        return pool

    async def close_all(self) -> None:
        for pool in self.made:
            with contextlib.suppress(Exception):  # a failed test may leave it half set up
                await pool.close(timeout=1.0)

    # -- concurrency
    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> asyncio.Future[Any]:
        """Runs ``fn(*args)`` concurrently: a task (async pools) or a thread
        with its own loop (sync pools); await the result."""
        if self.is_async:
            return asyncio.ensure_future(fn(*args))
        return asyncio.ensure_future(asyncio.to_thread(asyncio.run, fn(*args)))  # type: ignore[arg-type]

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def callback(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        """``fn`` (an async function of a :class:`Conn`) as a pool callback
        of the cell's flavour (``configure``, ``reset``, ``check``): awaited
        by the async pools, driven to its end at once for the sync ones (the
        facades never suspend on a sync connection)."""
        if self.is_async:

            async def acallback(conn: Any) -> Any:
                return await fn(Conn(conn))

            return acallback

        def callback(conn: Any) -> Any:
            return drive(fn(Conn(conn)))

        return callback

    def value(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """``fn`` as a ``conninfo=`` or ``kwargs=`` callable of the cell's
        flavour (the async pools also take coroutine functions)."""
        if self.is_async:

            async def avalue() -> Any:
                return fn()

            return avalue
        return fn

    async def connect(self, **kwargs: Any) -> Conn:
        """A connection of the cell's flavour, outside any pool."""
        return Conn(await maybe(self.connection_class.connect(self.dsn, **kwargs)))


def cells(
    impls: Iterable[str] = IMPLS,
    flavours: Iterable[str] = FLAVOURS,
    kinds: Iterable[str] = ("pool",),
) -> list[Any]:
    params = []
    for kind in kinds:
        for flavour in flavours:
            for impl in impls:
                cell = Cell(impl, flavour, kind)
                marks = [pytest.mark.native] if impl == "native" else []
                params.append(pytest.param(cell, id=cell.id, marks=marks))
    return params


Scenario = Callable[..., Awaitable[Any]]


def run(scenario: Scenario, cell: Cell, dsn: str, request: pytest.FixtureRequest) -> Any:
    async def main() -> Any:
        m = Matrix(cell, dsn, request)
        try:
            return await scenario(m)
        finally:
            await m.close_all()

    return asyncio.run(main())


def matrix(
    *,
    impls: Iterable[str] = IMPLS,
    flavours: Iterable[str] = FLAVOURS,
    kinds: Iterable[str] = ("pool",),
) -> Callable[[Scenario], Callable[..., Any]]:
    """Turns ``async def scenario(m: Matrix)`` into a test run on every cell
    of ``impls`` x ``flavours`` x ``kinds``."""
    params = cells(tuple(impls), tuple(flavours), tuple(kinds))

    def decorate(scenario: Scenario) -> Callable[..., Any]:
        # The scenario's parameters after ``m`` are the test's too (fixtures,
        # or parametrize arguments), passed on by name.
        extra = list(inspect.signature(scenario).parameters.values())[1:]

        def test(cell: Cell, dsn: str, request: pytest.FixtureRequest, **kwargs: Any) -> None:
            run(functools.partial(scenario, **kwargs), cell, dsn, request)

        own = [
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            for name in ("cell", "dsn", "request")
        ]
        test.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            own + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in extra]
        )
        test.__name__ = scenario.__name__
        test.__qualname__ = scenario.__qualname__
        test.__doc__ = scenario.__doc__
        test.__module__ = scenario.__module__
        return pytest.mark.parametrize("cell", params)(test)

    return decorate


# ------------------------------------------------------------------ helpers


async def wait_until(predicate: Callable[[], bool], timeout: float = SOON) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def closed_port() -> int:
    """A local TCP port nothing listens on (connecting is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unreachable_conninfo() -> str:
    return f"host=127.0.0.1 port={closed_port()} user=postgres dbname=test connect_timeout=2"


async def terminate(dsn: str, pid: int) -> None:
    """Ends a backend and waits until it is gone."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + SOON
        while time.monotonic() < deadline:
            cur = admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
            if not cur.fetchall():
                return
            await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} still there")


def available(pool: Any) -> int:
    return int(pool.get_stats()["pool_available"])


async def kill_the_idle_connection(m: Matrix, pool: Pool, idle: float = 1.2) -> int:
    """Borrows and returns the pool's one connection, ends its backend and
    waits ``idle`` seconds (past pypool's default ``check_after``, 1 s); the
    backend pid it had."""
    conn = await pool.getconn()
    pid = conn.pid
    await pool.putconn(conn)
    await terminate(m.dsn, pid)
    await m.sleep(idle)
    return pid
