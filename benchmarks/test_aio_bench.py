"""Measurements of ``pypool.AsyncPool`` (never assertions of speed).

* ``test_select1_throughput``: :data:`TASKS` tasks share a pool of
  :data:`SIZE` asyncpg connections, each doing checkout, ``SELECT 1`` and
  return in a loop. ``pypool.AsyncPool(adapter=pypool.asyncpg)`` against
  ``asyncpg.create_pool(min_size=SIZE, max_size=SIZE)``, with asyncpg's
  reset on both (``Connection.reset()``: pypool's asyncpg adapter runs the
  same call) or with no reset on either (``reset=False`` for pypool; for
  asyncpg a ``Connection`` subclass whose ``get_reset_query()`` is empty).
  :data:`ROUNDS` rounds, contenders interleaved within each round; the
  median requests per second is printed and recorded as a property.
* ``test_uncontended_cycle``: ``await acquire()`` + ``await release()`` on
  a fake connection, one task, both cores; ns per cycle.
* ``test_psycopg_select1_throughput``: the same :data:`TASKS` tasks and
  ``SELECT 1`` on ``pypool.psycopg.AsyncConnectionPool`` against
  ``psycopg_pool.AsyncConnectionPool``, :data:`SIZE` connections opened with
  ``autocommit=True``, rounds interleaved.
* ``test_psycopg_cycles``: ``await getconn()`` + ``await putconn()``, and
  ``async with pool.connection()``, one task, on the same two pools; ns per
  cycle, medians of interleaved rounds.

Run as a script for a one-off measurement of all of them:
``python benchmarks/test_aio_bench.py``.
The database is ``PYPOOL_BENCH_DSN``, else ``PYPOOL_TEST_DSN``, else a local
default.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

try:
    import pypool
except ImportError:  # run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import pypool
import pypool.asyncpg

asyncpg = pytest.importorskip("asyncpg")

TASKS = 100
SIZE = 10
PER_TASK = 50  # checkouts per task per round: TASKS * PER_TASK per round
ROUNDS = 7
DSN = os.environ.get(
    "PYPOOL_BENCH_DSN",
    os.environ.get("PYPOOL_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
)
CORES = {"native": "pypool._corepool", "python": "pypool._corepool_py"}


class NoResetConnection(asyncpg.Connection):  # type: ignore[misc,name-defined]
    """asyncpg's pool without its reset query (open transactions are still
    ended by ``Connection.reset()``'s own bookkeeping, no round trip)."""

    def get_reset_query(self) -> str:
        return ""


async def _pypool_contender(reset: bool, core: Any = None) -> tuple[Any, Any]:
    pool_class = pypool.AsyncPool if core is None else pypool.AsyncPool.with_core(core)
    pool = pool_class(
        lambda: asyncpg.connect(DSN),
        adapter=pypool.asyncpg,
        min_size=SIZE,
        max_size=SIZE,
        reset=None if reset else False,
    )
    await pool.open(wait=True, timeout=30)

    async def worker() -> None:
        for _ in range(PER_TASK):
            async with pool.connection() as conn:
                await conn.fetchval("SELECT 1")

    return pool, worker


async def _asyncpg_contender(reset: bool) -> tuple[Any, Any]:
    pool = await asyncpg.create_pool(
        DSN,
        min_size=SIZE,
        max_size=SIZE,
        **({} if reset else {"connection_class": NoResetConnection}),
    )

    async def worker() -> None:
        for _ in range(PER_TASK):
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")

    return pool, worker


async def _throughput(reset: bool, rounds: int = ROUNDS) -> dict[str, float]:
    contenders = {
        "pypool": await _pypool_contender(reset),
        "asyncpg": await _asyncpg_contender(reset),
    }
    return await _interleaved(contenders, rounds)


async def _psycopg_pools() -> dict[str, Any]:
    """pypool's and psycopg_pool's AsyncConnectionPool, full, autocommit."""
    import psycopg_pool

    import pypool.psycopg

    pools: dict[str, Any] = {}
    for name, cls in (
        ("pypool", pypool.psycopg.AsyncConnectionPool),
        ("psycopg_pool", psycopg_pool.AsyncConnectionPool),
    ):
        pool = cls(DSN, min_size=SIZE, max_size=SIZE, kwargs={"autocommit": True}, open=False)
        await pool.open(wait=True, timeout=30)
        pools[name] = pool
    return pools


async def _psycopg_throughput(rounds: int = ROUNDS) -> dict[str, float]:
    def contender(pool: Any) -> tuple[Any, Any]:
        async def worker() -> None:
            for _ in range(PER_TASK):
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")

        return pool, worker

    pools = await _psycopg_pools()
    return await _interleaved({name: contender(p) for name, p in pools.items()}, rounds)


async def _psycopg_cycles(cycles: int = 20_000, rounds: int = ROUNDS) -> dict[str, float]:
    """ns per ``getconn``/``putconn`` cycle and per ``connection()`` block."""
    pools = await _psycopg_pools()
    samples: dict[str, list[float]] = {}
    for i in range(rounds):
        order = list(pools.items())
        if i % 2:
            order.reverse()
        for name, pool in order:
            getconn, putconn = pool.getconn, pool.putconn
            start = time.perf_counter_ns()
            for _ in range(cycles):
                await putconn(await getconn())
            samples.setdefault(f"{name} getconn/putconn", []).append(
                (time.perf_counter_ns() - start) / cycles
            )
            start = time.perf_counter_ns()
            for _ in range(cycles):
                async with pool.connection():
                    pass
            samples.setdefault(f"{name} connection()", []).append(
                (time.perf_counter_ns() - start) / cycles
            )
    for pool in pools.values():
        await pool.close()
    return {name: statistics.median(values) for name, values in samples.items()}


async def _interleaved(contenders: dict[str, tuple[Any, Any]], rounds: int) -> dict[str, float]:
    """Median requests per second of each contender: ``TASKS`` tasks run its
    worker at once, contenders interleaved, the order reversed every round."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _, worker in contenders.values():  # warm up
        await asyncio.gather(*(worker() for _ in range(TASKS)))
    for i in range(rounds):
        order = list(contenders.items())
        if i % 2:
            order.reverse()
        for name, (_, worker) in order:
            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(TASKS)))
            samples[name].append(TASKS * PER_TASK / (time.perf_counter() - start))
    for pool, _ in contenders.values():
        await pool.close()
    return {name: statistics.median(values) for name, values in samples.items()}


async def _uncontended(core: Any, cycles: int = 100_000, rounds: int = ROUNDS) -> float:
    class Fake:
        async def close(self) -> None:
            return None

    async def factory() -> Fake:
        return Fake()

    pool = pypool.AsyncPool.with_core(core)(factory, min_size=1, max_size=1, reset=False)
    await pool.open(wait=True)
    acquire, release = pool.acquire, pool.release
    times = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(cycles):
            await release(await acquire())
        times.append((time.perf_counter_ns() - start) / cycles)
    await pool.close()
    return statistics.median(times)


def _db_reachable() -> bool:
    async def probe() -> None:
        conn = await asyncpg.connect(DSN, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception:
        return False
    return True


@pytest.mark.db
@pytest.mark.parametrize("reset", [True, False], ids=["reset", "no-reset"])
def test_select1_throughput(reset: bool, record_property: Any) -> None:
    if not _db_reachable():
        pytest.skip("database unreachable")
    medians = asyncio.run(_throughput(reset))
    ratio = medians["pypool"] / medians["asyncpg"]
    record_property("requests_per_s", medians)
    record_property("pypool_vs_asyncpg", ratio)
    print(f"\nSELECT 1, reset={reset}: {_ratio_line(medians, 'pypool', 'asyncpg')}")


def _run_against_psycopg_pool(
    measure: Callable[[], Awaitable[dict[str, float]]],
) -> dict[str, float]:
    """``measure()``'s medians; skips without psycopg_pool or the database."""
    pytest.importorskip("psycopg_pool")
    if not _db_reachable():
        pytest.skip("database unreachable")
    return asyncio.run(measure())


@pytest.mark.db
def test_psycopg_select1_throughput(record_property: Any) -> None:
    medians = _run_against_psycopg_pool(_psycopg_throughput)
    record_property("requests_per_s", medians)
    print(f"\nSELECT 1: {_ratio_line(medians, 'pypool', 'psycopg_pool')}")


@pytest.mark.db
def test_psycopg_cycles(record_property: Any) -> None:
    medians = _run_against_psycopg_pool(_psycopg_cycles)
    record_property("ns_per_cycle", medians)
    print("\n" + ", ".join(f"{k} {v:,.0f} ns" for k, v in medians.items()))


def _ratio_line(medians: dict[str, float], ours: str, theirs: str) -> str:
    return (
        ", ".join(f"{k} {v:,.0f}/s" for k, v in medians.items())
        + f", {ours}/{theirs} {medians[ours] / medians[theirs]:.3f}"
    )


@pytest.mark.parametrize("core_name", list(CORES))
def test_uncontended_cycle(core_name: str, record_property: Any) -> None:
    try:
        core = importlib.import_module(CORES[core_name])
    except ImportError as exc:
        pytest.skip(f"{core_name} core unavailable: {exc}")
    ns = asyncio.run(_uncontended(core))
    record_property("ns_per_cycle", ns)
    print(f"\nuncontended acquire+release ({core_name}): {ns:,.0f} ns/cycle")


def main() -> None:
    for reset in (True, False):
        medians = asyncio.run(_throughput(reset))
        print(
            f"asyncpg, SELECT 1 x {TASKS} tasks, pool {SIZE}, reset={reset}: "
            + _ratio_line(medians, "pypool", "asyncpg")
        )
    medians = asyncio.run(_psycopg_throughput())
    print(
        f"psycopg, SELECT 1 x {TASKS} tasks, pool {SIZE}: "
        + _ratio_line(medians, "pypool", "psycopg_pool")
    )
    cycles = asyncio.run(_psycopg_cycles())
    for what in ("getconn/putconn", "connection()"):
        ours, theirs = cycles[f"pypool {what}"], cycles[f"psycopg_pool {what}"]
        print(
            f"psycopg, {what}: pypool {ours:,.0f} ns, psycopg_pool {theirs:,.0f} ns, "
            f"pypool {theirs / ours:.2f}x faster"
        )
    for name, module in CORES.items():
        core = importlib.import_module(module)
        print(
            f"uncontended acquire+release ({name}): {asyncio.run(_uncontended(core)):,.0f} ns/cycle"
        )


if __name__ == "__main__":
    main()
