"""Every psycopg pool kind (``ConnectionPool``, ``NullConnectionPool``,
``AsyncConnectionPool``, ``AsyncNullConnectionPool``) starts afresh in a
child made by ``os.fork()``, on both cores.

One script per core, in a fresh interpreter, makes the four pools, uses
them, keeps one connection of each borrowed across the fork (inside an open
transaction), and keeps using the pools from other threads while it forks (a
thread for the sync pools, an event loop in a thread for the async ones).
The child uses every pool: each must make new connections (never hand out
the parent's) and serve within its timeout; then it closes the pools and
leaves through normal interpreter shutdown. The parent then checks that its
sessions were not touched: each borrowed connection is still in its
transaction on the same session, and the threads met no error.

Needs PostgreSQL (``dsn`` fixture).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import pytest

from _support.forking import fork_script, run_fork_script

pytest.importorskip("psycopg")

pytestmark = [
    pytest.mark.db,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()"),
]

SCRIPT = fork_script(r"""
import asyncio, gc, importlib, json, os, sys, threading, time, warnings

warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running
core = importlib.import_module(sys.argv[1])
dsn = sys.argv[2]

from pypool import psycopg as pp

PID = "SELECT pg_backend_pid()"
NOW = "SELECT now()"  # fixed for the length of a transaction


def with_core(cls, **kwargs):  # the one place a core is chosen
    return cls.with_core(core)(dsn, **kwargs)


sync_pools = {
    "ConnectionPool": with_core(pp.ConnectionPool, min_size=2, max_size=4, open=True, timeout=10),
    "NullConnectionPool": with_core(pp.NullConnectionPool, max_size=4, open=True, timeout=10),
}
held = {}
for name, pool in sync_pools.items():
    conn = pool.getconn()
    held[name] = (conn, conn.execute(PID).fetchone()[0], conn.execute(NOW).fetchone()[0])

loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()


def on_loop(coro, timeout=20):
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


async def make_async():
    pools = {
        "AsyncConnectionPool": with_core(
            pp.AsyncConnectionPool, min_size=2, max_size=4, open=False, timeout=10
        ),
        "AsyncNullConnectionPool": with_core(
            pp.AsyncNullConnectionPool, max_size=4, open=False, timeout=10
        ),
    }
    out = {}
    for name, pool in pools.items():
        await pool.open(wait=True)
        conn = await pool.getconn()
        pid = (await (await conn.execute(PID)).fetchone())[0]
        now = (await (await conn.execute(NOW)).fetchone())[0]
        out[name] = (conn, pid, now)
    return pools, out


async_pools, async_held = on_loop(make_async())
held.update(async_held)
parent_pids = {name: pid for name, (_, pid, _) in held.items()}

errors = []
uses = [0]
stop = threading.Event()


def use_sync():
    while not stop.is_set():
        for pool in sync_pools.values():
            try:
                with pool.connection() as conn:
                    conn.execute("SELECT 1")
                uses[0] += 1
            except Exception as exc:
                errors.append(f"sync: {type(exc).__name__}: {exc}")


async def use_async():
    while not stop.is_set():
        for pool in async_pools.values():
            try:
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")
                uses[0] += 1
            except Exception as exc:
                errors.append(f"async: {type(exc).__name__}: {exc}")
        await asyncio.sleep(0)


user = threading.Thread(target=use_sync)
user.start()
async_user = asyncio.run_coroutine_threadsafe(use_async(), loop)
time.sleep(0.1)

def child_main(report):
    for name, pool in sync_pools.items():
        start = time.monotonic()
        pids = []
        for _ in range(2):
            with pool.connection(timeout=5) as conn:
                pids.append(conn.execute(PID).fetchone()[0])
        report[name] = {"pids": pids, "seconds": time.monotonic() - start}
        pool.close()

    async def child_async():
        for name, pool in async_pools.items():
            start = time.monotonic()
            pids = []
            for _ in range(2):
                async with pool.connection(timeout=5) as conn:
                    pids.append((await (await conn.execute(PID)).fetchone())[0])
            report[name] = {"pids": pids, "seconds": time.monotonic() - start}
            await pool.close()

    asyncio.run(child_async())


child_report, child_status = fork_and_report(child_main)
time.sleep(0.2)  # let a session the child may have ended go
stop.set()
user.join(10)
async_user.result(10)

after = {}
problems = []
for name in sync_pools:
    conn, pid, now = held[name]
    try:
        same = conn.execute(PID).fetchone()[0] == pid and conn.execute(NOW).fetchone()[0] == now
        after[name] = same
        conn.rollback()
        sync_pools[name].putconn(conn)
    except Exception as exc:
        problems.append(f"{name}: {type(exc).__name__}: {exc}")


async def check_async():
    for name, pool in async_pools.items():
        conn, pid, now = held[name]
        try:
            same = (await (await conn.execute(PID)).fetchone())[0] == pid
            same = same and (await (await conn.execute(NOW)).fetchone())[0] == now
            after[name] = same
            await conn.rollback()
            await pool.putconn(conn)
        except Exception as exc:
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
        await pool.close()


on_loop(check_async())
for pool in sync_pools.values():
    pool.close()
print(json.dumps({
    "parent_pids": parent_pids,
    "child": child_report,
    "child_status": child_status,
    "after": after,
    "problems": problems,
    "thread_errors": errors[:5],
    "uses": uses[0],
}))
""")

KINDS = ["ConnectionPool", "NullConnectionPool", "AsyncConnectionPool", "AsyncNullConnectionPool"]
_results: dict[str, dict[str, Any]] = {}


def run_script(core_module: ModuleType, dsn: str) -> dict[str, Any]:
    """The script's report for a core, run once per session."""
    if core_module.__name__ not in _results:
        _results[core_module.__name__] = run_fork_script(
            SCRIPT, [core_module.__name__, dsn], timeout=90
        )
    return _results[core_module.__name__]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
def test_fork_child_starts_afresh(core_module: ModuleType, dsn: str, kind: str) -> None:
    report = run_script(core_module, dsn)
    child = report["child"]
    assert report["child_status"] == 0, report
    assert "error" not in child, child
    got = child[kind]
    assert len(got["pids"]) == 2, got
    assert not set(got["pids"]) & set(report["parent_pids"].values()), report
    assert got["seconds"] < 10, got


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
def test_fork_parent_sessions_untouched(core_module: ModuleType, dsn: str, kind: str) -> None:
    report = run_script(core_module, dsn)
    assert report["problems"] == [], report
    assert report["after"][kind] is True, report  # same session, same transaction
    assert report["thread_errors"] == [], report
    assert report["uses"] > 0, report
