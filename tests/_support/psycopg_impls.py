"""psycopg_pool and pypool.psycopg behind one face, for tests that run the
same scenario on each implementation ({psycopg_pool, pypool native, pypool
python} x {sync, async} x {pool, null pool}) and compare.

A scenario is a coroutine taking an :class:`Api`: for a sync pool its
methods call the pool directly (blocking the scenario's own loop, which
serves nothing else), for an async pool they await it. :func:`run_all` runs
several scenarios at once, each in a thread of its own, so that scenarios
that mostly wait (timeouts, network cuts) cost the time of the longest.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

IMPLS = ("psycopg_pool", "pypool-native", "pypool-python")
MODES = ("sync", "async")
KINDS = ("pool", "null")


def core_of(impl: str) -> ModuleType | None:
    """The pypool core module of ``impl`` (None for psycopg_pool)."""
    if impl == "psycopg_pool":
        return None
    from _support.cores import PYTHON_MODULE, import_native_core

    if impl == "pypool-native":
        return import_native_core()
    return importlib.import_module(PYTHON_MODULE)


def available_impls() -> list[str]:
    """The implementations of :data:`IMPLS` this machine has (the native core
    may be missing), for tests that run them all at once."""
    import pytest

    impls = []
    for impl in IMPLS:
        try:
            core_of(impl)
        except pytest.skip.Exception:
            continue
        impls.append(impl)
    return impls


def combinations() -> list[tuple[str, str, str]]:
    """Every available ``(impl, mode, kind)``."""
    return [(i, m, k) for i in available_impls() for m in MODES for k in KINDS]


def with_core(cls: type, core: ModuleType | None, *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)`` on ``core`` (None: as it is): the one place
    that says how a pypool pool is put on a given core."""
    if core is not None:
        cls = cls.with_core(core)  # type: ignore[attr-defined]
    return cls(*args, **kwargs)


def module_of(impl: str) -> ModuleType:
    if impl == "psycopg_pool":
        import psycopg_pool

        return psycopg_pool
    import pypool.psycopg

    return pypool.psycopg


def pool_class(impl: str, mode: str, kind: str) -> type:
    mod = module_of(impl)
    name = {"pool": "ConnectionPool", "null": "NullConnectionPool"}[kind]
    if mode == "async":
        name = "Async" + name
    return getattr(mod, name)  # type: ignore[no-any-return]


@dataclass
class Api:
    """One pool of one implementation, sync or async, behind awaitable calls."""

    impl: str
    mode: str
    kind: str
    pool: Any

    @property
    def label(self) -> str:
        return f"{self.impl}/{self.mode}/{self.kind}"

    @property
    def mod(self) -> ModuleType:
        return module_of(self.impl)

    async def _call(self, value: Any) -> Any:
        if self.mode == "async" and hasattr(value, "__await__"):
            return await value
        return value

    async def open(self, wait: bool = False, timeout: float = 10.0) -> None:
        await self._call(self.pool.open(wait=wait, timeout=timeout))

    async def getconn(self, timeout: float | None = None) -> Any:
        return await self._call(self.pool.getconn(timeout))

    async def putconn(self, conn: Any) -> None:
        await self._call(self.pool.putconn(conn))

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:
        if self.mode == "async":
            async with self.pool.connection(timeout) as conn:
                yield conn
        else:
            with self.pool.connection(timeout) as conn:
                yield conn

    async def fetch(self, conn: Any, sql: str) -> list[Any]:
        cur = await self._call(conn.execute(sql))
        return await self._call(cur.fetchall())  # type: ignore[no-any-return]

    async def close(self, timeout: float = 1.0) -> None:
        await self._call(self.pool.close(timeout=timeout))

    def stats(self) -> dict[str, int]:
        return self.pool.get_stats()  # type: ignore[no-any-return]


def make_api(impl: str, mode: str, kind: str, **kwargs: Any) -> Api:
    """A pool, not opened (``open=False``), of ``impl`` in ``mode``/``kind``.
    ``check=pool_class.check_connection`` may be given as ``check="builtin"``."""
    cls = pool_class(impl, mode, kind)
    if kwargs.get("check") == "builtin":
        kwargs["check"] = cls.check_connection
    kwargs.setdefault("open", False)
    if kind == "null":
        kwargs.pop("min_size", None)
    return Api(impl, mode, kind, with_core(cls, core_of(impl), **kwargs))


@dataclass
class Outcome:
    label: str
    result: Any = None
    error: BaseException | None = None
    elapsed: float = 0.0
    finished: bool = False


def run_all(
    jobs: dict[str, Callable[[], Awaitable[Any]]],
    timeout: float,
    required: Callable[[str], bool] = lambda label: True,
) -> dict[str, Outcome]:
    """Runs each ``jobs[label]()`` with ``asyncio.run`` in a daemon thread of
    its own, all at once; waits ``timeout`` seconds in all, or until every
    job whose label is ``required`` has finished (the others, reported
    beside them, get no longer than that). A job still running then is
    reported unfinished, with :attr:`Outcome.elapsed` the time waited (its
    thread is left to end)."""
    outcomes = {label: Outcome(label) for label in jobs}

    def run(label: str, job: Callable[[], Awaitable[Any]]) -> None:
        outcome = outcomes[label]
        start = time.monotonic()
        try:
            outcome.result = asyncio.run(job())  # type: ignore[arg-type]
        except BaseException as exc:
            outcome.error = exc
        outcome.elapsed = time.monotonic() - start
        outcome.finished = True

    threads = {
        label: threading.Thread(target=run, args=(label, job), daemon=True, name=f"job-{label}")
        for label, job in jobs.items()
    }
    start = time.monotonic()
    for thread in threads.values():
        thread.start()
    deadline = start + timeout
    for label, thread in threads.items():
        if required(label):
            thread.join(max(0.0, deadline - time.monotonic()))
    deadline = min(deadline, time.monotonic() + 0.1)
    for thread in threads.values():
        thread.join(max(0.0, deadline - time.monotonic()))
    waited = time.monotonic() - start
    for outcome in outcomes.values():
        if not outcome.finished:
            outcome.elapsed = waited
    return outcomes


def describe(
    outcomes: dict[str, Outcome],
    timed: Callable[[float], str],
    blocked: Callable[[float], str] | None = None,
) -> dict[str, str]:
    """A row of :func:`report` an outcome: ``blocked(elapsed)`` for one that
    had not finished (when given), ``timed(result)`` for a float result,
    else the result or the error."""
    rows = {}
    for label, o in outcomes.items():
        if blocked is not None and not o.finished:
            rows[label] = blocked(o.elapsed)
        elif isinstance(o.result, float):
            rows[label] = timed(o.result)
        else:
            rows[label] = f"{o.result or o.error!r}"
    return rows


def report(title: str, rows: dict[str, str]) -> str:
    """A small table for the test output (``-s`` or ``-rA`` shows it)."""
    width = max(map(len, rows), default=0)
    lines = [title] + [f"  {label:<{width}}  {text}" for label, text in rows.items()]
    text = "\n".join(lines)
    print(text)
    return text
