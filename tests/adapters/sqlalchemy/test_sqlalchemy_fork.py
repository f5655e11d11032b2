"""SQLAlchemy engines on pypool's pools across ``os.fork()``, against PostgreSQL.

Each case runs a script in a fresh interpreter. The parent makes an engine
(``pool_size=3``), leaves two connections idle in the pool, keeps a third
borrowed inside an open transaction, and keeps using the pool from another
thread (sync: a thread; asyncio: tasks on an event loop in a thread) while
it forks. The child uses the same engine, closes the borrowed connection,
disposes the engine and leaves through normal interpreter shutdown
(``sys.exit(0)``: atexit handlers, finalizers, garbage collection). Then the
parent checks that its sessions were not touched: the idle ones are alive,
the borrowed one is still in the same transaction, and the thread that kept
using the pool met no error.

pypool's pools must start afresh in the child with no help (new
connections; the parent's are neither handed out, reset, closed nor
finalized), and also when the child follows SQLAlchemy's advice for
multiprocessing, ``engine.dispose(close=False)``. SQLAlchemy's own pools run
the same script with that advice: the child gets new connections too, but
closing the borrowed connection in the child resets it (a ROLLBACK sent on
the parent's socket), which ends the parent's transaction. That is the
difference ``docs/sqlalchemy.md`` states.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from _support.cores import import_native_core
from _support.forking import fork_script, run_fork_script

pytestmark = [
    pytest.mark.db,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()"),
]

SCRIPT = fork_script(r"""
import asyncio, gc, importlib, json, os, sys, threading, time

kind, mode, dispose_in_child, dsn = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]

import sqlalchemy as sa
from sqlalchemy import pool as sa_pool

if kind == "sqlalchemy":
    poolclass = sa_pool.QueuePool if mode == "sync" else sa_pool.AsyncAdaptedQueuePool
else:
    from pypool import sqlalchemy as pp
    core = importlib.import_module(
        "pypool._corepool" if kind == "native" else "pypool._corepool_py"
    )
    base = pp.QueuePool if mode == "sync" else pp.AsyncAdaptedQueuePool
    poolclass = base.with_core(core)

driver = {"sync": "psycopg", "asyncpg": "asyncpg", "psycopg-async": "psycopg_async"}[mode]
url = f"postgresql+{driver}://" + dsn.split("://", 1)[1]
SETTINGS = dict(poolclass=poolclass, pool_size=3, max_overflow=0, pool_timeout=10)
PID = "select pg_backend_pid()"
NOW = "select now()"  # fixed for the length of a transaction

thread_errors = []
thread_uses = [0]
stop = threading.Event()

if mode == "sync":
    engine = sa.create_engine(url, **SETTINGS)

    def run(fn, *args):  # a step of the parent, on its own side
        return fn(*args)

    def setup():
        c1, c2, held = engine.connect(), engine.connect(), engine.connect()
        idle = [c1.exec_driver_sql(PID).scalar(), c2.exec_driver_sql(PID).scalar()]
        c1.close()
        c2.close()
        held_pid = held.exec_driver_sql(PID).scalar()
        return idle, held, held_pid, str(held.exec_driver_sql(NOW).scalar())

    def use_pool():
        while not stop.is_set():
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("select pg_sleep(0.002)")
                thread_uses[0] += 1
            except Exception as exc:
                thread_errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)

    worker = threading.Thread(target=use_pool, daemon=True)

    def held_now(held):
        return str(held.exec_driver_sql(NOW).scalar())

    def child_steps(held):
        report = {}
        if dispose_in_child:
            engine.dispose(close=False)
        conns = [engine.connect() for _ in range(2)]
        report["pids"] = [c.exec_driver_sql(PID).scalar() for c in conns]
        for c in conns:
            c.close()
        try:
            held.close()
            report["held_close"] = "ok"
        except Exception as exc:
            report["held_close"] = type(exc).__name__
        report["checked_out"] = engine.pool.checkedout()
        engine.dispose()
        return report

    def child_main(held):
        return child_steps(held)

    def close_parent(held):
        held.close()
        engine.dispose()
else:
    from sqlalchemy.ext.asyncio import create_async_engine

    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()
    engine = create_async_engine(url, **SETTINGS)

    def run(fn, *args):
        return asyncio.run_coroutine_threadsafe(fn(*args), loop).result(30)

    async def scalar(conn, sql):
        return (await conn.exec_driver_sql(sql)).scalar()

    async def setup():
        c1, c2, held = await engine.connect(), await engine.connect(), await engine.connect()
        idle = [await scalar(c1, PID), await scalar(c2, PID)]
        await c1.close()
        await c2.close()
        held_pid = await scalar(held, PID)
        return idle, held, held_pid, str(await scalar(held, NOW))

    async def use_pool():
        while not stop.is_set():
            try:
                async with engine.connect() as conn:
                    await conn.exec_driver_sql("select pg_sleep(0.002)")
                thread_uses[0] += 1
            except Exception as exc:
                thread_errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)

    class worker:
        task = None

        @staticmethod
        def start():
            worker.task = asyncio.run_coroutine_threadsafe(use_pool(), loop)

        @staticmethod
        def join(timeout):
            worker.task.result(timeout)

    async def held_now(held):
        return str(await scalar(held, NOW))

    async def child_steps(held):
        report = {}
        if dispose_in_child:
            await engine.dispose(close=False)
        conns = [await engine.connect() for _ in range(2)]
        report["pids"] = [await scalar(c, PID) for c in conns]
        for c in conns:
            await c.close()
        try:
            await asyncio.wait_for(held.close(), 5)
            report["held_close"] = "ok"
        except BaseException as exc:
            report["held_close"] = type(exc).__name__
        report["checked_out"] = engine.pool.checkedout()
        await engine.dispose()
        return report

    def child_main(held):
        return asyncio.run(asyncio.wait_for(child_steps(held), 30))

    async def close_parent(held):
        await held.close()
        await engine.dispose()

idle_pids, held, held_pid, held_txn = run(setup)
worker.start()
time.sleep(0.2)
uses_before_fork = thread_uses[0]

child_report, child_status = fork_and_report(lambda report: report.update(child_main(held)))
time.sleep(0.5)  # the pool keeps being used meanwhile
uses_after_child = thread_uses[0]
time.sleep(0.3)
stop.set()
worker.join(30)

import psycopg

with psycopg.connect(dsn, autocommit=True) as admin:
    alive = {
        row[0]
        for row in admin.execute(
            "select pid from pg_stat_activity where pid = any(%s)", (idle_pids + [held_pid],)
        )
    }
try:
    same_transaction = run(held_now, held) == held_txn
except Exception as exc:
    same_transaction = f"{type(exc).__name__}"
run(close_parent, held)
print(json.dumps({
    "idle_pids": idle_pids,
    "held_pid": held_pid,
    "child": child_report,
    "child_status": child_status,
    "alive": sorted(alive),
    "same_transaction": same_transaction,
    "thread_errors": thread_errors[:3],
    "thread_used_pool_after_fork": uses_after_child > uses_before_fork,
}))
""")

CASES = [
    pytest.param("sqlalchemy", True, id="sqlalchemy-dispose_close_false"),
    pytest.param("native", False, marks=pytest.mark.native, id="native"),
    pytest.param("native", True, marks=pytest.mark.native, id="native-dispose_close_false"),
    pytest.param("python", False, id="python"),
    pytest.param("python", True, id="python-dispose_close_false"),
]


def run_script(kind: str, mode: str, dispose: bool, dsn: str) -> dict[str, Any]:
    return run_fork_script(SCRIPT, [kind, mode, "1" if dispose else "0", dsn], timeout=120)


@pytest.mark.parametrize("mode", ["sync", "asyncpg", "psycopg-async"])
@pytest.mark.parametrize(("kind", "dispose"), CASES)
def test_child_starts_afresh(dsn: str, kind: str, dispose: bool, mode: str) -> None:
    if kind == "native":
        import_native_core()
    if mode != "sync":
        pytest.importorskip("greenlet")
        pytest.importorskip("asyncpg" if mode == "asyncpg" else "psycopg")
    seen = run_script(kind, mode, dispose, dsn)
    child = seen["child"]
    assert "error" not in child, child
    assert seen["child_status"] == 0
    parents = set(seen["idle_pids"]) | {seen["held_pid"]}
    # The child connects its own: none of the parent's sessions is handed out.
    assert len(set(child["pids"])) == 2 and not set(child["pids"]) & parents
    assert child["checked_out"] == 0
    # The parent's idle sessions were neither closed nor finalized by the child,
    # and the thread that kept using the pool met no error.
    assert set(seen["idle_pids"]) <= set(seen["alive"])
    assert seen["thread_errors"] == [] and seen["thread_used_pool_after_fork"]
    if kind == "sqlalchemy":
        if mode == "sync":
            # SQLAlchemy's pool resets the borrowed connection on close in the
            # child: a ROLLBACK on the parent's socket ends its transaction.
            assert child["held_close"] == "ok" and seen["same_transaction"] is False
        return
    # pypool's: closing the parent's connection in the child does nothing to it.
    assert child["held_close"] == "ok"
    assert seen["held_pid"] in seen["alive"] and seen["same_transaction"] is True
