"""A pypool.Pool across ``os.fork()``, with real drivers and servers.

Each case runs a script in a fresh interpreter (so that the test runner's
own threads do not matter): the parent makes a pool (``min_size=2``), uses
it, and forks; the child uses the same pool object, which must make NEW
connections (never hand out the parent's), then leaves through normal
interpreter shutdown (``sys.exit(0)``); the parent then checks that its own
connections still work and are the same sessions as before.

With every driver here, a child that *closes* its copy of a connection ends
the parent's session (the close goes over the shared socket), and psycopg2
is the driver that also does harm on finalization in some versions. So the
child drains and closes its pool (explicitly, then again at exit): the pool
must touch only the connections the child made. One connection stays
borrowed by the parent across the fork, referenced by the script's globals
in the child until its interpreter shuts down.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from _support.children import child_env
from _support.forking import fork_script, run_fork_script

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")

DEFAULT_MYSQL = "mysql://root@127.0.0.1:3306/test"

SCRIPT = fork_script(r"""
import gc, importlib, json, os, sys, time

core = importlib.import_module(sys.argv[1])
driver = sys.argv[2]
params = json.loads(sys.argv[3])

import pypool
from pypool.dbapi import connect_factory

if driver == "psycopg":
    import psycopg

    factory = connect_factory(psycopg.connect, params["dsn"], connect_timeout=5)

    def session(conn):
        return conn.execute("SELECT pg_backend_pid()").fetchone()[0]

elif driver == "psycopg2":
    import psycopg2

    factory = connect_factory(psycopg2.connect, params["dsn"], connect_timeout=5)

    def session(conn):
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            return cur.fetchone()[0]

else:
    import pymysql

    factory = connect_factory(pymysql.connect, connect_timeout=5, **params)

    def session(conn):
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            return cur.fetchone()[0]


# No hand-out check in the parent: a session the child ended must show up as
# an error, not be replaced quietly.
pool = pypool.Pool.with_core(core)(factory, min_size=2, max_size=5, check=False, timeout=10)
pool.wait(10)


def borrow(n):
    # n connections at once: their sessions and object ids; all returned.
    conns = [pool.acquire() for _ in range(n)]
    try:
        return [session(c) for c in conns], [id(c) for c in conns]
    finally:
        for c in conns:
            pool.release(c)
        del conns


parent_sessions, parent_objects = borrow(2)
for _ in range(3):
    borrow(1)
# One more connection stays borrowed across the fork: the child's copy of it
# is referenced by this module until the child's interpreter shuts down.
held = pool.acquire()
held_session = session(held)


def child_main(report):
    sessions, objects = borrow(3)
    sessions2, objects2 = borrow(1)
    stats = pool.stats()
    size = pool.size
    report.update({
        "sessions": sessions + sessions2,
        "parents_handed_out": [o for o in objects + objects2 if o in parent_objects],
        "size": size,
        "created": stats["pypool.connections.created"],
        "closed": stats["pypool.connections.closed"],
        "requests": stats["pypool.requests"],
        "open": stats["db.client.connection.count"]["idle"]
        + stats["db.client.connection.count"]["used"],
    })
    pool.drain()
    # Let the replacements finish: a connect still in flight when the
    # interpreter exits is another matter (test_exit_while_connecting).
    pool.wait(10)
    quiet = 0
    deadline = time.monotonic() + 10
    while quiet < 5 and time.monotonic() < deadline:
        quiet = quiet + 1 if pool.stats()["pypool.connections.connecting"] == 0 else 0
        time.sleep(0.02)


child_report, child_status = fork_and_report(child_main)
time.sleep(0.3)  # let a session the child may have ended go
after = None
error = None
try:
    assert session(held) == held_session, "the held connection changed session"
    pool.release(held)
    del held
    after = borrow(2)[0]
    conns = [pool.acquire() for _ in range(2)]
    for c in conns:
        if driver == "psycopg":
            ok = c.execute("SELECT 1").fetchone()[0]
        else:
            with c.cursor() as cur:
                cur.execute("SELECT 1")
                ok = cur.fetchone()[0]
        assert ok == 1
    for c in conns:
        pool.release(c)
    del conns
except BaseException as exc:
    error = f"{type(exc).__name__}: {str(exc).strip()}"
pool.close()
print(json.dumps({
    "parent_sessions": parent_sessions,
    "held_session": held_session,
    "child": child_report,
    "child_status": child_status,
    "after": after,
    "error": error,
}))
""")


def pg_dsn() -> str:
    return os.environ.get("PYPOOL_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def mysql_params() -> dict[str, Any]:
    parts = urlsplit(os.environ.get("PYPOOL_TEST_MYSQL", DEFAULT_MYSQL))
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
        "database": parts.path.lstrip("/") or "test",
    }


def _unusable(why: str) -> None:
    if os.environ.get("PYPOOL_REQUIRE_DB") == "1":
        pytest.fail(f"PYPOOL_REQUIRE_DB=1 but {why}")
    pytest.skip(why)


def params_for(driver: str, dsn: str) -> dict[str, Any]:
    """The script's connection parameters; skips when the driver or the
    server is missing."""
    pytest.importorskip(driver)
    if driver == "pymysql":
        import pymysql

        params = mysql_params()
        try:
            pymysql.connect(**params, connect_timeout=3).close()
        except Exception as exc:  # any error means "not usable"
            _unusable(
                f"MariaDB/MySQL at {params['host']}:{params['port']} unusable: {type(exc).__name__}"
            )
        return params
    return {"dsn": dsn}


_results: dict[tuple[str, str], dict[str, Any]] = {}


def run_script(core_module: ModuleType, driver: str, dsn: str) -> dict[str, Any]:
    """The script's report for ``(core, driver)``, run once per session."""
    key = (core_module.__name__, driver)
    if key not in _results:
        params = params_for(driver, dsn)
        _results[key] = run_fork_script(
            SCRIPT, [core_module.__name__, driver, json.dumps(params)], timeout=90
        )
    return _results[key]


DRIVERS = ["psycopg", "psycopg2", "pymysql"]


@pytest.mark.db
@pytest.mark.timeout(120)
@pytest.mark.parametrize("driver", DRIVERS)
def test_fork_child_gets_new_connections_parent_keeps_its_own(
    core_module: ModuleType, dsn: str, driver: str
) -> None:
    report = run_script(core_module, driver, dsn)
    child = report["child"]
    assert report["child_status"] == 0, report
    assert "error" not in child, child
    parent = set(report["parent_sessions"])
    assert len(parent) == 2
    parent.add(report["held_session"])
    assert not set(child["sessions"]) & parent, f"the child got a parent's session: {report}"
    assert len(set(child["sessions"][:3])) == 3
    assert child["parents_handed_out"] == [], "the child was handed a parent's connection"
    assert child["size"] >= 3
    assert report["error"] is None, (
        f"the parent's connections broke after the child exited: {report}"
    )
    after = set(report["after"])
    assert len(after) == 2 and after <= parent, f"the parent's sessions changed: {report}"


@pytest.mark.db
@pytest.mark.timeout(120)
@pytest.mark.parametrize("driver", DRIVERS)
def test_fork_child_counters_start_from_zero(
    core_module: ModuleType, dsn: str, driver: str
) -> None:
    child = run_script(core_module, driver, dsn)["child"]
    assert "error" not in child, child
    assert child["requests"] == 4
    assert child["created"] - child["closed"] == child["open"] == child["size"]
    assert child["created"] == child["size"]


EXIT_SCRIPT = r"""
import importlib, ssl, sys, time

import pypool

core = importlib.import_module(sys.argv[1])


class Conn:
    def rollback(self):
        pass

    def close(self):
        pass


def tls_connect():
    # What a driver does while it sets up TLS (PyMySQL makes an SSL context
    # for every connect; libpq negotiates TLS): OpenSSL work, GIL released.
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:
        ssl.create_default_context()
    return Conn()


pool = pypool.Pool.with_core(core)(tls_connect, min_size=2, num_workers=2)
time.sleep(0.2)  # both connect workers are inside tls_connect()
sys.exit(0)  # normal shutdown, connects in flight
"""


@pytest.mark.timeout(120)
def test_exit_while_connecting(core_module: ModuleType) -> None:
    # Each child exits with both connect workers inside a TLS setup; exit
    # waits for them (bounded). Three children at a time keep the run short
    # and add load, which is when a teardown race shows.
    def run_child(_: int) -> int:
        proc = subprocess.run(
            [sys.executable, "-c", EXIT_SCRIPT, core_module.__name__],
            capture_output=True,
            text=True,
            timeout=30,
            env=child_env(),
        )
        return proc.returncode

    with concurrent.futures.ThreadPoolExecutor(3) as executor:
        codes = list(executor.map(run_child, range(15)))
    assert codes == [0] * len(codes), f"exit codes: {codes}"
