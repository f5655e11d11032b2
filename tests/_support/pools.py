"""Run one scenario on ``pypool.Pool`` and on ``pypool.AsyncPool``, on both cores.

A behaviour of the policy layer is tested once, as async code, against a thin
facade: the pool methods that may block or are coroutines in ``AsyncPool``
(``acquire``, ``release``, ``open``, ``close``, ``resize``...) are awaited
alike, and the facade calls the sync pool's method or awaits the async
pool's. Everything else (``stats()``, ``size``, ``add_listener``...) is the
pool's own. The fakes are :class:`~_support.fakes.Factory` and
:class:`~_support.fakes.FakeAdapter` for ``Pool``, their asyncio twins for
``AsyncPool``; both kinds of fake connection have ``serial``, ``closed``,
``closes``, ``rollbacks``, ``checks``, ``fail_reset`` and ``fail_check``.

A sync pool's scenario runs on an event loop too: a blocking call blocks it,
which is what a sync caller does; concurrent actors go through
:meth:`Pools.spawn` (a thread for ``Pool``, a task for ``AsyncPool``).

:func:`take` (acquire, never a closed connection), :func:`retired` (the
closes by reason) and :meth:`Pools.closed_by_now` (a retired connection is
closed, by the time each flavour closes it) serve the scenarios.

:func:`each_pool` turns a scenario into a test over {native, python} x
{sync, async}; the scenario receives a :class:`Pools`::

    @each_pool
    async def test_something(pools: Pools) -> None:
        pool, factory = await pools.open(max_size=2)
        conn = await pool.acquire()
        await pool.release(conn)
        assert factory.made == 1
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Any

import pytest

from _support.cores import PYTHON_MODULE, import_native_core
from _support.fakes import AsyncFactory, AsyncFakeAdapter, Factory, FakeAdapter
from _support.waiting import eventually
from pypool import AsyncPool, Pool, stats

CORES = ("native", "python")
FLAVOURS = ("sync", "async")

#: Methods that block in ``Pool`` and are coroutines in ``AsyncPool``
#: (``resize`` is a plain method of both, or a coroutine: awaited if it is one).
AWAITED = frozenset(
    {"acquire", "release", "discard", "open", "close", "wait", "check", "drain", "resize", "run"}
)


async def maybe(value: Any) -> Any:
    """``await value`` if it is awaitable, else ``value``."""
    if inspect.isawaitable(value):
        return await value
    return value


async def take(pool: Facade, timeout: float = 2.0) -> Any:
    """``await pool.acquire(timeout)``, and the pool never hands out a
    closed connection."""
    conn = await pool.acquire(timeout)
    assert not conn.closed, f"{conn!r} was handed out after it was closed"
    return conn


def retired(pool: Any) -> dict[str, int]:
    """Connections the pool closed, by reason."""
    return dict(pool.stats()[stats.RETIRED])


def assert_whole(pool: Any, size: int) -> None:
    """Nothing borrowed, nothing lost: ``size`` connections, all idle."""
    assert pool.in_use == 0
    assert pool.idle + pool.in_use == size
    assert pool.size == size


def drive(coro: Any) -> Any:
    """Runs a coroutine that never suspends to its end (a facade over a sync
    connection); its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the callback suspended: it cannot run in a sync pool")


class Facade:
    """A ``Pool`` or an ``AsyncPool``, awaited alike; ``raw`` is the pool."""

    def __init__(self, raw: Pool[Any] | AsyncPool[Any]) -> None:
        object.__setattr__(self, "raw", raw)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if name not in AWAITED:
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await maybe(attr(*args, **kwargs))

        return call

    @contextlib.asynccontextmanager
    async def connection(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        block = self.raw.connection(*args, **kwargs)
        if hasattr(block, "__aenter__"):
            async with block as conn:
                yield conn
        else:
            with block as conn:
                yield conn


class Pools:
    """What a scenario gets: its core and flavour, and a pool maker.

    ``pools.make(**kw)`` makes a pool of the flavour on the core, over a new
    fake factory unless ``factory=`` is given, with the fake adapter and a 5 s
    timeout unless ``kw`` says otherwise, and returns ``(facade, factory)``;
    ``await pools.open(**kw)`` also opens it and waits for ``min_size``.
    Every pool made is closed when the scenario ends.
    """

    def __init__(self, core: ModuleType, flavour: str) -> None:
        self.core = core
        self.flavour = flavour
        self.made: list[Facade] = []

    @property
    def is_async(self) -> bool:
        return self.flavour == "async"

    @property
    def cls(self) -> type[Any]:
        return (AsyncPool if self.is_async else Pool).with_core(self.core)

    def factory(self, **kw: Any) -> Any:
        """A new fake factory of the flavour (``delay``, ``on_call``, ``keep``)."""
        return AsyncFactory(**kw) if self.is_async else Factory(**kw)

    def adapter(self) -> Any:
        return AsyncFakeAdapter() if self.is_async else FakeAdapter()

    def flavoured(self, fn: Callable[..., Any], delay: float = 0.0) -> Callable[..., Any]:
        """``fn`` as a callback of the flavour (a factory, ``configure``...):
        for ``Pool`` a function, for ``AsyncPool`` a coroutine function
        (which yields to the loop first); either sleeps ``delay`` seconds,
        then calls ``fn``."""
        if self.is_async:

            async def coroutine(*args: Any) -> Any:
                await asyncio.sleep(delay)
                return fn(*args)

            return coroutine
        if not delay:
            return fn

        def function(*args: Any) -> Any:
            time.sleep(delay)
            return fn(*args)

        return function

    def make(self, factory: Any = None, **kw: Any) -> tuple[Facade, Any]:
        factory = self.factory() if factory is None else factory
        kw.setdefault("adapter", self.adapter())
        kw.setdefault("timeout", 5.0)
        pool = Facade(self.cls(factory, **kw))
        self.made.append(pool)
        return pool, factory

    async def open(self, factory: Any = None, **kw: Any) -> tuple[Facade, Any]:
        pool, factory = self.make(factory, **kw)
        await pool.open(wait=True, timeout=5.0)
        return pool, factory

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> asyncio.Future[Any]:
        """Runs ``fn(*args)`` concurrently: a task (``AsyncPool``) or a thread
        with its own loop (``Pool``, whose calls block); await the result."""
        if self.is_async:
            return asyncio.ensure_future(fn(*args))
        return asyncio.ensure_future(asyncio.to_thread(asyncio.run, fn(*args)))  # type: ignore[arg-type]

    async def closed_by_now(self, conn: Any) -> bool:
        """Whether ``conn``, just retired, is closed. ``Pool`` closes it
        before the call that retired it returns; ``AsyncPool`` in a task of
        its own (its close is a coroutine), soon after: that is waited for."""
        if self.is_async:
            return await eventually(lambda: conn.closed)
        return bool(conn.closed)

    async def close_all(self) -> None:
        for pool in self.made:
            with contextlib.suppress(Exception):  # a failed test may leave it half set up
                await pool.close(timeout=2.0)


def core_named(name: str) -> ModuleType:
    """The core module of that name (skips, or fails when expected, if the
    native core cannot load)."""
    if name == "native":
        return import_native_core()
    return importlib.import_module(PYTHON_MODULE)


def each_pool(
    scenario: Callable[..., Awaitable[None]] | None = None,
    *,
    flavours: tuple[str, ...] = FLAVOURS,
) -> Any:
    """Makes ``async def scenario(pools, **fixtures)`` a test over each core
    and each of ``flavours``; other parameters are fixtures, as in any test."""

    def decorate(scenario: Callable[..., Awaitable[None]]) -> Callable[..., None]:
        params = [
            pytest.param(
                core,
                flavour,
                id=f"{core}-{flavour}",
                marks=[pytest.mark.native] if core == "native" else [],
            )
            for core in CORES
            for flavour in flavours
        ]
        fixtures = [p for p in inspect.signature(scenario).parameters.values() if p.name != "pools"]

        @pytest.mark.parametrize(("pool_core", "pool_flavour"), params)
        @functools.wraps(scenario)
        def test(pool_core: str, pool_flavour: str, **kwargs: Any) -> None:
            pools = Pools(core_named(pool_core), pool_flavour)

            async def main() -> None:
                try:
                    await scenario(pools, **kwargs)
                finally:
                    await pools.close_all()

            asyncio.run(main())

        test.__signature__ = inspect.Signature(
            [
                inspect.Parameter("pool_core", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                inspect.Parameter("pool_flavour", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in fixtures),
            ]
        )
        return test  # type: ignore[no-any-return]

    return decorate if scenario is None else decorate(scenario)
