"""pypool.sqlalchemy against SQLAlchemy's own pools, with real engines.

Every scenario runs on pypool's pool classes (on both cores) and on
SQLAlchemy's ``QueuePool`` / ``AsyncAdaptedQueuePool``, and the observable
results (events, status, errors, what the database saw) must be the same.
The sqlite tests need no server; the others carry the ``db`` marker.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any
from urllib.parse import urlsplit

import pytest

sa = pytest.importorskip("sqlalchemy")
from sqlalchemy import event  # noqa: E402
from sqlalchemy import pool as sa_pool  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402

from _support.cores import import_native_core  # noqa: E402
from _support.sa_matrix import (  # noqa: E402
    EventLog,
    Labels,
    capture_logs,
    logger_level,
    runner_for,
)
from pypool import sqlalchemy as pp  # noqa: E402

KINDS = [
    pytest.param("sqlalchemy", id="sqlalchemy"),
    pytest.param("native", marks=pytest.mark.native, id="native"),
    pytest.param("python", id="python"),
]
STATUS = (
    "Pool size: {}  Connections in pool: {} Current Overflow: {} "
    "Current Checked out connections: {}"
)
TIMEOUT_MESSAGE = (
    "QueuePool limit of size {} overflow {} reached, connection timed out, timeout {:.2f}"
)


def _core_module(kind: str) -> Any:
    if kind == "native":
        return import_native_core()
    return importlib.import_module("pypool._corepool_py")


@pytest.fixture(params=KINDS)
def poolclass(request: pytest.FixtureRequest) -> type:
    """SQLAlchemy's QueuePool, or pypool's bound to one core."""
    if request.param == "sqlalchemy":
        return sa_pool.QueuePool
    return pp.QueuePool.with_core(_core_module(request.param))


@pytest.fixture(params=KINDS)
def async_poolclass(request: pytest.FixtureRequest) -> type:
    if request.param == "sqlalchemy":
        return sa_pool.AsyncAdaptedQueuePool
    return pp.AsyncAdaptedQueuePool.with_core(_core_module(request.param))


@pytest.fixture(params=[pytest.param("native", marks=pytest.mark.native), "python"])
def pypool_class(request: pytest.FixtureRequest) -> type:
    """pypool's QueuePool only (for comparisons run inside the test)."""
    return pp.QueuePool.with_core(_core_module(request.param))


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def engines() -> Iterator[list[Any]]:
    """Engines made by a test, disposed at the end."""
    made: list[Any] = []
    yield made
    for engine in made:
        engine.dispose()


# ------------------------------------------------------------------ helpers


def sqlite_event_scenario(poolclass: type, url: str) -> tuple[list[Any], list[str]]:
    engine = sa.create_engine(url, poolclass=poolclass, pool_size=1, max_overflow=2)
    log = EventLog(engine.pool)
    statuses = []
    try:
        c1 = engine.connect()
        c2 = engine.connect()
        c3 = engine.connect()
        statuses.append(engine.pool.status())
        c1.exec_driver_sql("select 1")
        c1.close()  # kept (pool_size 1)
        c2.close()  # overflow: closed
        statuses.append(engine.pool.status())
        c4 = engine.connect()  # reuses c1's
        c4.invalidate()
        c4.close()
        c5 = engine.connect()  # same record, reconnected
        c5.exec_driver_sql("select 1")
        c5.close()
        raw = engine.raw_connection()
        raw.invalidate(soft=True)
        raw.close()
        raw = engine.raw_connection()  # soft-invalidated: recycled at checkout
        raw.detach()
        raw.close()
        c3.close()
        statuses.append(engine.pool.status())
        engine.pool.dispose()
        statuses.append(engine.pool.status())
    finally:
        engine.dispose()
    return log.events, statuses


# ------------------------------------------------------------------ sqlite


def test_events_and_status_match_queuepool(pypool_class: type, sqlite_url: str) -> None:
    expected = sqlite_event_scenario(sa_pool.QueuePool, sqlite_url)
    got = sqlite_event_scenario(pypool_class, sqlite_url)
    assert got == expected
    events = [entry[0] for entry in got[0]]
    assert events[:3] == ["first_connect", "connect", "checkout"]
    for name in ("invalidate", "soft_invalidate", "detach", "close_detached", "reset", "close"):
        assert name in events


def test_sqlite_basic(poolclass: type, sqlite_url: str, engines: list[Any]) -> None:
    engine = sa.create_engine(sqlite_url, poolclass=poolclass, pool_size=2, max_overflow=1)
    engines.append(engine)
    assert type(engine.pool) is poolclass
    with engine.begin() as conn:
        conn.exec_driver_sql("create table t (x integer)")
        conn.exec_driver_sql("insert into t values (1)")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("select x from t").scalar() == 1
    assert engine.pool.status() == STATUS.format(2, 1, -1, 0)
    assert engine.pool.size() == 2 and engine.pool.timeout() == 30.0


def test_status_sequence_matches_queuepool(pypool_class: type, sqlite_url: str) -> None:
    def run(cls: type) -> list[Any]:
        engine = sa.create_engine(sqlite_url, poolclass=cls, pool_size=3, max_overflow=2)
        pool = engine.pool
        out = []
        conns = []
        for _ in range(5):
            conns.append(engine.connect())
            out.append((pool.checkedin(), pool.checkedout(), pool.overflow(), pool.status()))
        for conn in conns:
            conn.close()
            out.append((pool.checkedin(), pool.checkedout(), pool.overflow(), pool.status()))
        recreated = pool.recreate()
        out.append(
            (type(recreated) is cls, recreated.size(), recreated._max_overflow, recreated.status())
        )
        engine.dispose()
        return out

    assert run(pypool_class) == run(sa_pool.QueuePool)


def test_timeout_message(poolclass: type, sqlite_url: str, engines: list[Any]) -> None:
    engine = sa.create_engine(
        sqlite_url, poolclass=poolclass, pool_size=1, max_overflow=1, pool_timeout=0.2
    )
    engines.append(engine)
    held = [engine.connect(), engine.connect()]
    start = time.monotonic()
    with pytest.raises(sa.exc.TimeoutError) as info:
        engine.connect()
    assert time.monotonic() - start >= 0.19
    assert TIMEOUT_MESSAGE.format(1, 1, 0.2) in str(info.value)
    assert info.value.code == "3o7r"
    for conn in held:
        conn.close()
    with engine.connect() as conn:  # usable again
        conn.exec_driver_sql("select 1")


def test_waiter_gets_returned_connection(
    poolclass: type, sqlite_url: str, engines: list[Any]
) -> None:
    engine = sa.create_engine(
        sqlite_url, poolclass=poolclass, pool_size=1, max_overflow=0, pool_timeout=5
    )
    engines.append(engine)
    held = engine.connect()
    got: list[Any] = []

    def waiter() -> None:
        with engine.connect() as conn:
            got.append(conn.exec_driver_sql("select 2").scalar())

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.1)
    assert not got
    held.close()
    thread.join(5)
    assert got == [2]
    assert engine.pool.checkedout() == 0


def test_max_overflow_unlimited(poolclass: type, sqlite_url: str, engines: list[Any]) -> None:
    engine = sa.create_engine(
        sqlite_url, poolclass=poolclass, pool_size=2, max_overflow=-1, pool_timeout=0.1
    )
    engines.append(engine)
    conns = [engine.connect() for _ in range(40)]
    assert engine.pool.checkedout() == 40 and engine.pool.overflow() == 38
    for conn in conns:
        conn.close()
    assert engine.pool.status() == STATUS.format(2, 2, 0, 0)


def test_pool_size_zero_is_unlimited(poolclass: type, sqlite_url: str, engines: list[Any]) -> None:
    engine = sa.create_engine(
        sqlite_url, poolclass=poolclass, pool_size=0, max_overflow=0, pool_timeout=0.1
    )
    engines.append(engine)
    conns = [engine.connect() for _ in range(10)]
    assert (engine.pool.checkedout(), engine.pool.overflow()) == (10, 0)
    for conn in conns:
        conn.close()
    assert engine.pool.checkedin() == 10


def test_use_lifo(pypool_class: type, sqlite_url: str) -> None:
    def order(cls: type, lifo: bool) -> list[int]:
        engine = sa.create_engine(sqlite_url, poolclass=cls, pool_size=3, pool_use_lifo=lifo)
        raws = [engine.raw_connection() for _ in range(3)]
        names = {id(r.dbapi_connection): i for i, r in enumerate(raws)}
        for raw in raws:
            raw.close()
        again = [engine.raw_connection() for _ in range(3)]
        out = [names[id(r.dbapi_connection)] for r in again]
        for raw in again:
            raw.close()
        engine.dispose()
        return out

    for lifo in (False, True):
        assert order(pypool_class, lifo) == order(sa_pool.QueuePool, lifo)
    assert order(pypool_class, True) == [2, 1, 0]


def test_recycle(poolclass: type, sqlite_url: str, engines: list[Any]) -> None:
    engine = sa.create_engine(sqlite_url, poolclass=poolclass, pool_recycle=1)
    engines.append(engine)
    log = EventLog(engine.pool)
    with engine.connect() as conn:
        first = conn.connection.dbapi_connection
    time.sleep(1.1)
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is not first
    assert log.count("connect") == 2 and log.count("close") == 1


def test_dispose_with_checked_out(pypool_class: type, sqlite_url: str) -> None:
    def run(cls: type) -> list[Any]:
        engine = sa.create_engine(sqlite_url, poolclass=cls, pool_size=3)
        log = EventLog(engine.pool)
        out: list[Any] = []
        c1, c2, c3 = engine.connect(), engine.connect(), engine.connect()
        c2.close()
        c3.close()
        engine.dispose()  # closes the idle two; c1 stays usable
        out.append(log.count("close"))
        out.append(c1.exec_driver_sql("select 3").scalar())
        c1.close()
        with engine.connect() as conn:  # the new pool
            out.append(conn.exec_driver_sql("select 4").scalar())
        out.append(engine.pool.status())
        engine.dispose()
        out.append(log.events)
        return out

    assert run(pypool_class) == run(sa_pool.QueuePool)


def test_pool_dispose_keeps_pool_usable(pypool_class: type, sqlite_url: str) -> None:
    engine = sa.create_engine(
        sqlite_url, poolclass=pypool_class, pool_size=2, max_overflow=0, pool_timeout=0.1
    )
    held = engine.connect()
    engine.connect().close()
    engine.pool.dispose()
    # Unlike QueuePool (which forgets the checked-out one) the counts stay true.
    assert engine.pool.checkedin() == 0 and engine.pool.checkedout() == 1
    with engine.connect() as conn:
        conn.exec_driver_sql("select 1")
    held.close()
    assert engine.pool.checkedout() == 0
    engine.dispose()


BAD_ARGUMENTS = [
    pytest.param({"pool_size": -1}, "pool_size", id="pool_size-negative"),
    pytest.param({"pool_size": 2.5}, "pool_size", id="pool_size-float"),
    pytest.param({"pool_size": "5"}, "pool_size", id="pool_size-str"),
    pytest.param({"max_overflow": -2}, "max_overflow", id="max_overflow-below-minus-one"),
    pytest.param({"max_overflow": 1.5}, "max_overflow", id="max_overflow-float"),
    pytest.param({"pool_size": 200_000, "max_overflow": 100_000}, "at most", id="too-large"),
    pytest.param({"pool_timeout": -1}, "pool_timeout", id="timeout-negative"),
    pytest.param({"pool_timeout": float("nan")}, "pool_timeout", id="timeout-nan"),
    pytest.param({"pool_timeout": "30"}, "pool_timeout", id="timeout-str"),
]


@pytest.mark.parametrize(("arguments", "named"), BAD_ARGUMENTS)
@pytest.mark.parametrize("asyncio", [False, True], ids=["sync", "async"])
def test_bad_arguments_raise_at_once(
    pypool_class: type, arguments: dict[str, Any], named: str, asyncio: bool
) -> None:
    # SQLAlchemy's pools take these and misbehave later: a RecursionError at
    # the first checkout beyond pool_size (max_overflow=-2), a ValueError in
    # the first caller that waits (negative timeout; asyncio: a TimeoutError
    # at once), a wait that never ends (NaN), counts that drift (a float
    # pool_size). pypool's refuse them when the engine is made, with an error
    # that is both pypool's ConfigurationError and SQLAlchemy's ArgumentError.
    cls = pypool_class
    if asyncio:
        cls = pp.AsyncAdaptedQueuePool.with_core(pypool_class._core_module)
    kw = {"poolclass": cls, **arguments}
    if asyncio:
        pytest.importorskip("asyncpg")
        from sqlalchemy.ext.asyncio import create_async_engine
    with pytest.raises(pp.ConfigurationError, match=named) as info:
        if asyncio:  # makes no connection
            create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:9/none", **kw)
        else:
            sa.create_engine("sqlite://", **kw)
    assert isinstance(info.value, sa.exc.ArgumentError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("timeout", [None, 0, 1, 2.5, float("inf")])
def test_accepted_timeouts(pypool_class: type, timeout: float | None) -> None:
    engine = sa.create_engine("sqlite://", poolclass=pypool_class, pool_timeout=timeout)
    assert engine.pool.timeout() == timeout
    engine.dispose()


def _one_slot_engine(poolclass: type, engines: list[Any], creator: Any, pool_timeout: float) -> Any:
    """A SQLite engine over ``creator`` with one slot (``pool_size=1``, no
    overflow), disposed by the ``engines`` fixture."""
    engine = sa.create_engine(
        "sqlite://",
        creator=creator,
        poolclass=poolclass,
        pool_size=1,
        max_overflow=0,
        pool_timeout=pool_timeout,
    )
    engines.append(engine)
    return engine


def test_connect_failure_frees_the_slot(poolclass: type, engines: list[Any]) -> None:
    failures = [True]

    def creator() -> Any:
        if failures:
            failures.pop()
            raise RuntimeError("connect failed")
        import sqlite3

        return sqlite3.connect(":memory:", check_same_thread=False)

    engine = _one_slot_engine(poolclass, engines, creator, pool_timeout=0.1)
    with pytest.raises(RuntimeError):
        engine.raw_connection()
    assert engine.pool.checkedout() == 0
    raw = engine.raw_connection()
    raw.close()
    assert engine.pool.checkedin() == 1


@pytest.mark.parametrize("where", ["creator", "connect", "checkout"])
def test_interrupted_checkout_loses_no_slot(
    poolclass: type, engines: list[Any], where: str
) -> None:
    """A Ctrl-C while a checkout makes or hands out a connection: the slot
    is given back (its connection closed or pooled), as with QueuePool."""
    import gc
    import sqlite3

    armed = [True]

    def trap(*args: Any) -> None:
        if armed:
            armed.pop()
            raise KeyboardInterrupt

    def creator() -> Any:
        if where == "creator":
            trap()
        return sqlite3.connect(":memory:", check_same_thread=False)

    engine = _one_slot_engine(poolclass, engines, creator, pool_timeout=1.0)
    if where != "creator":
        event.listen(engine.pool, where, trap)
    with pytest.raises(KeyboardInterrupt):
        engine.raw_connection()
    gc.collect()  # SQLAlchemy returns a dropped checkout from its finalizer
    assert engine.pool.checkedout() == 0
    raw = engine.raw_connection()  # pool_size=1, no overflow: a lost slot would time out
    raw.close()
    assert engine.pool.checkedout() == 0


@pytest.mark.parametrize("kind", [pytest.param("native", marks=pytest.mark.native), "python"])
def test_async_wait_cancelled_as_a_connection_is_handed_is_cancelled(kind: str) -> None:
    """A checkout waiting in the core's queue, cancelled in the very step a
    returned connection is handed to it, ends cancelled (on 3.10 and 3.11,
    asyncio.wait_for would have returned the connection instead), and the
    connection is passed on, not lost."""
    poolclass = pp.AsyncAdaptedQueuePool.with_core(_core_module(kind))
    pool = poolclass(lambda: object(), pool_size=1, max_overflow=0, timeout=5)
    core = pool._core
    slot = core.reserve()
    core.fill(slot, object())
    held = core.try_acquire()

    async def main() -> None:
        waiter = asyncio.ensure_future(pool._wait_async(5.0))
        for _ in range(100):
            if core.waiting:
                break
            await asyncio.sleep(0.001)
        assert core.waiting == 1
        core.release(held)  # handed to the waiter: its wake-up is on its way...
        waiter.cancel()  # ...and so is the cancellation
        await asyncio.wait([waiter], timeout=5)
        assert waiter.cancelled(), "the wait swallowed its cancellation"
        assert core.idle == 1 and core.in_use == 0 and core.waiting == 0

    asyncio.run(main())


class _FillInterrupted:
    """A core whose next fill() is interrupted, as by a Ctrl-C landing just
    after the creator returned."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)

    def fill(self, *args: Any) -> None:
        raise KeyboardInterrupt


def test_interrupt_between_connect_and_fill_frees_the_slot(
    pypool_class: type, engines: list[Any]
) -> None:
    """A checkout interrupted after it connected, before the connection is
    in the core: the slot does not stay "connecting" and the new connection
    is closed."""
    import sqlite3

    made: list[Any] = []

    def creator() -> Any:
        made.append(sqlite3.connect(":memory:", check_same_thread=False))
        return made[-1]

    engine = sa.create_engine(
        "sqlite://", creator=creator, poolclass=pypool_class, pool_size=1, max_overflow=0,
        pool_timeout=1.0,
    )  # fmt: skip
    engines.append(engine)
    core = engine.pool._core
    engine.pool._core = _FillInterrupted(core)
    with pytest.raises(KeyboardInterrupt):
        engine.raw_connection()
    engine.pool._core = core
    assert core.connecting == 0 and core.size == 0
    with pytest.raises(sqlite3.ProgrammingError):
        made[0].execute("select 1")  # closed
    raw = engine.raw_connection()
    raw.close()
    assert engine.pool.checkedout() == 0


def test_stats(pypool_class: type, sqlite_url: str) -> None:
    engine = sa.create_engine(
        sqlite_url, poolclass=pypool_class, pool_size=2, max_overflow=0, pool_timeout=0.05
    )
    held = [engine.connect(), engine.connect()]
    with pytest.raises(sa.exc.TimeoutError):
        engine.connect()
    stats = engine.pool.stats()
    assert stats["size"] == 2 and stats["in_use"] == 2 and stats["timeouts"] == 1
    for conn in held:
        conn.close()
    assert engine.pool.stats()["idle"] == 2
    engine.dispose()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_connects_its_own(pypool_class: type, sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url, poolclass=pypool_class, pool_size=2)
    idle = engine.raw_connection()
    parent_conn = idle.dbapi_connection
    idle.close()
    held = engine.raw_connection()  # borrowed across the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            raw = engine.raw_connection()
            fresh = (
                raw.dbapi_connection is not parent_conn
                and raw.dbapi_connection is not held.dbapi_connection
            )
            raw.close()
            held.close()  # the parent's: kept aside, neither pooled nor closed
            code = 0 if fresh and engine.pool.checkedout() == 0 else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    result = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert result == b"\x00"
    assert held.dbapi_connection.execute("select 1").fetchone() == (1,)  # the parent's still works
    held.close()
    engine.dispose()


# ------------------------------------------------------------------ servers

MYSQL_URL = os.environ.get("PYPOOL_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


@pytest.fixture(scope="session")
def pg_url(dsn: str) -> str:
    return "postgresql+psycopg://" + dsn.split("://", 1)[1]


@pytest.fixture(scope="session")
def mysql_url() -> str:
    pymysql = pytest.importorskip("pymysql")
    parts = urlsplit(MYSQL_URL)
    try:
        pymysql.connect(
            host=parts.hostname,
            port=parts.port or 3306,
            user=parts.username,
            password=parts.password or "",
            database=parts.path.lstrip("/"),
            connect_timeout=3,
        ).close()
    except Exception as exc:
        if os.environ.get("PYPOOL_REQUIRE_DB") == "1":
            pytest.fail(f"MariaDB at {parts.hostname}:{parts.port} unusable: {exc}")
        pytest.skip(f"MariaDB at {parts.hostname}:{parts.port} unusable: {exc}")
    return MYSQL_URL


@pytest.fixture(params=["postgresql", "mariadb"])
def server_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url")


class Base(DeclarativeBase):
    pass


class Item(Base):
    # Unique to this process: the servers are shared with other test runs.
    __tablename__ = f"pypool_sa_items_{os.getpid()}"
    id: Mapped[int] = mapped_column(primary_key=True)
    worker: Mapped[int]
    n: Mapped[int]


@pytest.mark.db
def test_orm_sessions_many_threads(poolclass: type, server_url: str, engines: list[Any]) -> None:
    engine = sa.create_engine(
        server_url, poolclass=poolclass, pool_size=4, max_overflow=2, pool_timeout=30
    )
    engines.append(engine)
    open_now = [0]
    open_max = [0]
    lock = threading.Lock()

    @event.listens_for(engine.pool, "connect")
    def on_connect(*_: Any) -> None:
        with lock:
            open_now[0] += 1
            open_max[0] = max(open_max[0], open_now[0])

    @event.listens_for(engine.pool, "close")
    def on_close(*_: Any) -> None:
        with lock:
            open_now[0] -= 1

    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    errors: list[BaseException] = []
    threads_n, rounds = 16, 25

    def work(worker: int) -> None:
        try:
            for n in range(rounds):
                with Session(engine) as session, session.begin():
                    session.add(Item(worker=worker, n=n))
                with Session(engine) as session:
                    count = session.scalar(sa.select(sa.func.count()).where(Item.worker == worker))
                    assert count == n + 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    with Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Item)) == threads_n * rounds
    assert open_max[0] <= 6
    assert engine.pool.checkedout() == 0 and engine.pool.checkedin() <= 4
    Base.metadata.drop_all(engine)


def _backend_id(conn: Any) -> int:
    if conn.dialect.name == "postgresql":
        return conn.exec_driver_sql("select pg_backend_pid()").scalar()
    return conn.exec_driver_sql("select connection_id()").scalar()


def _kill(engine: Any, backend: int) -> None:
    admin = sa.create_engine(engine.url, poolclass=sa_pool.NullPool)
    with admin.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"select pg_terminate_backend({int(backend)})")
        else:
            conn.exec_driver_sql(f"kill {int(backend)}")
    admin.dispose()
    time.sleep(0.2)


@pytest.mark.db
@pytest.mark.parametrize("pre_ping", [True, False], ids=["pre_ping", "no_pre_ping"])
def test_killed_backend(
    poolclass: type, server_url: str, pre_ping: bool, engines: list[Any]
) -> None:
    engine = sa.create_engine(server_url, poolclass=poolclass, pool_size=2, pool_pre_ping=pre_ping)
    engines.append(engine)
    log = EventLog(engine.pool)
    with engine.connect() as conn:
        first = _backend_id(conn)
    _kill(engine, first)
    if pre_ping:
        with engine.connect() as conn:  # the ping fails; SQLAlchemy reconnects
            second = _backend_id(conn)
    else:
        with pytest.raises(sa.exc.DBAPIError) as info, engine.connect() as conn:
            _backend_id(conn)
        assert info.value.connection_invalidated
        with engine.connect() as conn:
            second = _backend_id(conn)
    assert second != first
    assert log.count("invalidate") == 1 and log.count("connect") == 2
    assert engine.pool.checkedout() == 0 and engine.pool.checkedin() == 1


@pytest.mark.db
def test_recycle_server(poolclass: type, pg_url: str, engines: list[Any]) -> None:
    engine = sa.create_engine(pg_url, poolclass=poolclass, pool_recycle=1)
    engines.append(engine)
    with engine.connect() as conn:
        first = _backend_id(conn)
    with engine.connect() as conn:
        assert _backend_id(conn) == first
    time.sleep(1.1)
    with engine.connect() as conn:
        assert _backend_id(conn) != first


@pytest.mark.db
def test_exhaustion_server(poolclass: type, server_url: str, engines: list[Any]) -> None:
    engine = sa.create_engine(
        server_url, poolclass=poolclass, pool_size=2, max_overflow=1, pool_timeout=0.3
    )
    engines.append(engine)
    held = [engine.connect() for _ in range(3)]
    with pytest.raises(sa.exc.TimeoutError) as info:
        engine.connect()
    assert TIMEOUT_MESSAGE.format(2, 1, 0.3) in str(info.value)
    for conn in held:
        conn.close()
    assert engine.pool.status() == STATUS.format(2, 2, 0, 0)


@pytest.mark.db
def test_dispose_server(poolclass: type, pg_url: str, engines: list[Any]) -> None:
    engine = sa.create_engine(pg_url, poolclass=poolclass, pool_size=3)
    engines.append(engine)
    c1, c2 = engine.connect(), engine.connect()
    idle_backend = _backend_id(c2)
    c2.close()
    engine.dispose()
    assert _backend_id(c1) > 0
    with engine.connect() as conn:
        alive = conn.exec_driver_sql(
            f"select count(*) from pg_stat_activity where pid = {int(idle_backend)}"
        ).scalar()
        assert alive == 0
    c1.close()


# ------------------------------------------------------------------ asyncio


@pytest.fixture(params=["asyncpg", "psycopg"])
def async_url(request: pytest.FixtureRequest, dsn: str) -> str:
    pytest.importorskip(request.param)
    pytest.importorskip("greenlet")
    return f"postgresql+{request.param}://" + dsn.split("://", 1)[1]


def _async_engine(url: str, poolclass: type, **kw: Any) -> Any:
    from sqlalchemy.ext.asyncio import create_async_engine

    return create_async_engine(url, poolclass=poolclass, **kw)


@pytest.mark.db
def test_async_many_tasks(async_poolclass: type, async_url: str) -> None:
    async def main() -> None:
        engine = _async_engine(
            async_url, async_poolclass, pool_size=5, max_overflow=0, pool_timeout=30
        )
        busy = [0, 0]

        async def task(i: int) -> int:
            async with engine.connect() as conn:
                busy[0] += 1
                busy[1] = max(busy[1], busy[0])
                value = (await conn.exec_driver_sql(f"select {i}")).scalar()
                await asyncio.sleep(0.005)
                busy[0] -= 1
                return value

        ticks = 0
        stop = False

        async def ticker() -> None:  # runs only if the loop is never blocked
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0.001)

        tick_task = asyncio.create_task(ticker())
        results = await asyncio.gather(*(task(i) for i in range(100)))
        stop = True
        await tick_task
        assert results == list(range(100))
        assert busy[1] <= 5
        assert ticks > 10
        assert engine.pool.checkedout() == 0 and engine.pool.checkedin() == 5
        await engine.dispose()

    asyncio.run(main())


@pytest.mark.db
def test_async_timeout_and_cancel(async_poolclass: type, async_url: str) -> None:
    async def main() -> None:
        engine = _async_engine(
            async_url, async_poolclass, pool_size=1, max_overflow=0, pool_timeout=0.3
        )
        held = await engine.connect()
        start = time.monotonic()
        with pytest.raises(sa.exc.TimeoutError) as info:
            await engine.connect()
        assert time.monotonic() - start >= 0.29
        assert TIMEOUT_MESSAGE.format(1, 0, 0.3) in str(info.value)

        async def wait_then_use() -> None:
            async with engine.connect() as conn:
                await conn.exec_driver_sql("select 1")

        waiter = asyncio.create_task(wait_then_use())
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await held.close()
        async with engine.connect() as conn:  # the cancelled wait left nothing behind
            assert (await conn.exec_driver_sql("select 5")).scalar() == 5
        assert engine.pool.checkedout() == 0 and engine.pool.checkedin() == 1
        await engine.dispose()

    asyncio.run(main())


@pytest.mark.db
def test_async_killed_backend(async_poolclass: type, async_url: str, pg_url: str) -> None:
    async def main() -> None:
        engine = _async_engine(async_url, async_poolclass, pool_size=2, pool_pre_ping=True)
        async with engine.connect() as conn:
            first = (await conn.exec_driver_sql("select pg_backend_pid()")).scalar()
        admin = sa.create_engine(pg_url, poolclass=sa_pool.NullPool)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"select pg_terminate_backend({int(first)})")
        admin.dispose()
        await asyncio.sleep(0.2)
        async with engine.connect() as conn:
            second = (await conn.exec_driver_sql("select pg_backend_pid()")).scalar()
        assert second != first
        await engine.dispose()

    asyncio.run(main())


def test_async_pool_refuses_sync_engine(sqlite_url: str) -> None:
    with pytest.raises(sa.exc.ArgumentError):
        sa.create_engine(sqlite_url, poolclass=pp.AsyncAdaptedQueuePool)


# ------------------------------------------- the pool arguments, side by side
#
# Each scenario below runs on SQLAlchemy's own pool and on the pool under test
# (``kind``), on a sync engine (psycopg) and on asyncio engines (asyncpg and
# psycopg's async driver), and what a user can observe must be the same: which
# calls block, what they raise (and whether they waited), status(), which
# connection each checkout got (by backend pid), which events fired, which log
# records were written. For kind "sqlalchemy" the scenario's own assertions
# check that they describe SQLAlchemy's behaviour.

MODES = ["sync", "asyncpg", "psycopg-async"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "native":
        import_native_core()  # skips (or fails when required) without it
    return str(request.param)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    if request.param != "sync":
        pytest.importorskip("greenlet")
        pytest.importorskip("asyncpg" if request.param == "asyncpg" else "psycopg")
    return str(request.param)


def matrix_poolclass(kind: str, mode: str) -> type:
    if mode == "sync":
        return (
            sa_pool.QueuePool
            if kind == "sqlalchemy"
            else pp.QueuePool.with_core(_core_module(kind))
        )
    if kind == "sqlalchemy":
        return sa_pool.AsyncAdaptedQueuePool
    return pp.AsyncAdaptedQueuePool.with_core(_core_module(kind))


_DRIVERS = {"sync": "psycopg", "asyncpg": "asyncpg", "psycopg-async": "psycopg_async"}
_table_names = itertools.count()


class Scene:
    """What a scenario works with: engines of the pool class under test, the
    runner (threads or tasks), a name for every backend seen, and a plain
    psycopg connection outside the pool for looking at the database."""

    def __init__(self, dsn: str, mode: str, poolclass: type) -> None:
        self.dsn = dsn
        self.mode = mode
        self.poolclass = poolclass
        self.url = f"postgresql+{_DRIVERS[mode]}://" + dsn.split("://", 1)[1]
        self.runner = runner_for("sync" if mode == "sync" else "async")
        self.backends = Labels(by_value=True)
        self.labels = Labels()
        self._engines: list[Any] = []
        self._tables: list[str] = []

    def engine(self, **kw: Any) -> Any:
        """An engine on the pool class under test (the sync face of an
        asyncio engine, used inside the runner); disposed at the end."""
        if self.mode == "sync":
            engine = sa.create_engine(self.url, poolclass=self.poolclass, **kw)
        else:
            from sqlalchemy.ext.asyncio import create_async_engine

            engine = create_async_engine(self.url, poolclass=self.poolclass, **kw).sync_engine
        self._engines.append(engine)
        return engine

    def backend(self, conn: Any) -> int | None:
        """The label of the server session behind an engine connection."""
        return self.backends(conn.exec_driver_sql("select pg_backend_pid()").scalar())

    def raw_backend(self, raw: Any) -> int | None:
        cursor = raw.cursor()
        cursor.execute("select pg_backend_pid()")
        pid = cursor.fetchone()[0]
        cursor.close()
        return self.backends(pid)

    def outside(self, sql: str) -> Any:
        """Runs one statement on a connection of its own (autocommit)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cursor = conn.execute(sql)
            row = cursor.fetchone() if cursor.description else None
            return None if row is None else row[0]

    def table(self) -> str:
        name = f"pypool_sa_{os.getpid()}_{next(_table_names)}"
        self.outside(f"create table {name} (x integer)")
        self._tables.append(name)
        return name

    def terminate(self, pid: int) -> None:
        self.outside(f"select pg_terminate_backend({int(pid)})")

    def close(self) -> None:
        for engine in self._engines:
            engine.dispose()
        for name in self._tables:
            self.outside(f"drop table if exists {name}")


def observe(dsn: str, kind: str, mode: str, scenario: Callable[..., Any], *args: Any) -> Any:
    """Runs ``scenario(scene, *args)`` on ``kind``'s pool class and returns
    what it observed."""
    scene = Scene(dsn, mode, matrix_poolclass(kind, mode))

    def main() -> Any:
        try:
            return scenario(scene, *args)
        finally:
            scene.close()

    return scene.runner.run(main)


def side_by_side(dsn: str, kind: str, mode: str, scenario: Callable[..., Any], *args: Any) -> Any:
    """The scenario's observations on ``kind``, which must equal SQLAlchemy's
    own pool's (run first, in the same test)."""
    expected = observe(dsn, "sqlalchemy", mode, scenario, *args)
    if kind == "sqlalchemy":
        return expected
    got = observe(dsn, kind, mode, scenario, *args)
    assert got == expected
    return got


def _pid(conn: Any) -> int:
    return int(conn.exec_driver_sql("select pg_backend_pid()").scalar())


def scenario_timeout_none(scene: Scene) -> dict[str, Any]:
    """pool_timeout=None: a checkout at the limit waits for as long as it
    takes, then gets the returned connection."""
    engine = scene.engine(pool_size=1, max_overflow=0, pool_timeout=None)
    log = EventLog(engine.pool, scene.labels)
    held = engine.connect()
    held_backend = scene.backend(held)

    def waiter() -> int | None:
        with engine.connect() as conn:
            return scene.backend(conn)

    actor = scene.runner.spawn(waiter)
    scene.runner.sleep(1.0)
    still_waiting = not scene.runner.done(actor)
    status_while_waiting = engine.pool.status()
    held.close()
    got = scene.runner.join(actor)
    return {
        "timeout": engine.pool.timeout(),
        "still_waiting": still_waiting,
        "waiter_got": got,
        "held": held_backend,
        "status": [status_while_waiting, engine.pool.status()],
        "events": log.events,
    }


@pytest.mark.db
def test_pool_timeout_none_waits_forever(dsn: str, kind: str, mode: str) -> None:
    seen = side_by_side(dsn, kind, mode, scenario_timeout_none)
    assert seen["timeout"] is None
    assert seen["still_waiting"]
    assert seen["waiter_got"] == seen["held"]  # the returned connection, reused


def scenario_timeout_bounded(scene: Scene, timeout: float) -> dict[str, Any]:
    """At the limit, a checkout raises TimeoutError: at once with 0, after
    ``timeout`` seconds otherwise; below the limit it connects, never waits."""
    engine = scene.engine(pool_size=1, max_overflow=1, pool_timeout=timeout)
    log = EventLog(engine.pool, scene.labels)
    first = engine.connect()
    second = engine.connect()  # an overflow connection: made, not waited for
    status_full = engine.pool.status()

    ended: list[bool] = []

    def release_later() -> bool:
        # Returns the connection when the checkout below has ended, or after
        # timeout + 5 s if it has not: True if it had ended by then.
        deadline = time.monotonic() + timeout + 5.0
        while not ended and time.monotonic() < deadline:
            scene.runner.sleep(0.02)
        first.close()
        return bool(ended)

    releaser = scene.runner.spawn(release_later)
    start = time.monotonic()
    try:
        engine.connect()
        outcome = "connected"
    except sa.exc.TimeoutError as exc:
        outcome = f"TimeoutError: {exc}"
    waited = time.monotonic() - start
    ended.append(True)
    raised_before_release = scene.runner.join(releaser)
    with engine.connect() as conn:  # usable again: the returned connection
        reused = scene.backend(conn)
    second.close()
    return {
        "timeout": engine.pool.timeout(),
        "outcome": outcome,
        "waited_the_timeout": waited >= timeout * 0.95,
        "raised_before_release": raised_before_release,
        "reused": reused,
        "status": [status_full, engine.pool.status()],
        "events": log.events,
    }


@pytest.mark.db
@pytest.mark.parametrize("timeout", [0, 0.3], ids=["zero", "positive"])
def test_pool_timeout_bounded(dsn: str, kind: str, mode: str, timeout: float) -> None:
    seen = side_by_side(dsn, kind, mode, scenario_timeout_bounded, timeout)
    assert seen["outcome"].startswith("TimeoutError: " + TIMEOUT_MESSAGE.format(1, 1, timeout))
    assert seen["raised_before_release"] and seen["waited_the_timeout"]
    assert seen["timeout"] == timeout


def scenario_pool_size_zero(scene: Scene) -> dict[str, Any]:
    """pool_size=0: no limit at all (max_overflow is ignored), every returned
    connection kept."""
    engine = scene.engine(pool_size=0, max_overflow=0, pool_timeout=0.5)
    log = EventLog(engine.pool, scene.labels)
    statuses = []
    conns = [engine.connect() for _ in range(7)]
    first = [scene.backend(c) for c in conns]
    statuses.append(engine.pool.status())
    for conn in conns:
        conn.close()
    statuses.append(engine.pool.status())
    conns = [engine.connect() for _ in range(7)]
    again = [scene.backend(c) for c in conns]
    statuses.append(engine.pool.status())
    for conn in conns:
        conn.close()
    statuses.append(engine.pool.status())
    return {
        "first": first,
        "again": again,
        "size_overflow": (engine.pool.size(), engine.pool.overflow()),
        "status": statuses,
        "connects": log.count("connect"),
        "closes": log.count("close"),
    }


@pytest.mark.db
def test_pool_size_zero_means_no_limit(dsn: str, kind: str, mode: str) -> None:
    seen = side_by_side(dsn, kind, mode, scenario_pool_size_zero)
    assert seen["connects"] == 7 and seen["closes"] == 0
    assert sorted(seen["again"]) == sorted(seen["first"])
    assert seen["status"][1] == STATUS.format(0, 7, 0, 0)


def scenario_max_overflow_unlimited(scene: Scene) -> dict[str, Any]:
    """max_overflow=-1: no limit on overflow connections, each closed when
    returned beyond pool_size idle ones."""
    engine = scene.engine(pool_size=2, max_overflow=-1, pool_timeout=0.5)
    log = EventLog(engine.pool, scene.labels)
    conns = [engine.connect() for _ in range(8)]
    first = [scene.backend(c) for c in conns]
    statuses = [engine.pool.status()]
    for conn in conns:
        conn.close()
        statuses.append(engine.pool.status())
    conns = [engine.connect() for _ in range(3)]
    again = [scene.backend(c) for c in conns]
    for conn in conns:
        conn.close()
    statuses.append(engine.pool.status())
    return {"first": first, "again": again, "status": statuses, "events": log.events}


@pytest.mark.db
def test_max_overflow_minus_one_means_no_limit(dsn: str, kind: str, mode: str) -> None:
    seen = side_by_side(dsn, kind, mode, scenario_max_overflow_unlimited)
    assert seen["status"][0] == STATUS.format(2, 0, 6, 8)
    assert seen["status"][-1] == STATUS.format(2, 2, 0, 0)


def scenario_recycle(scene: Scene, recycle: int) -> dict[str, Any]:
    """pool_recycle=-1: never recycled; 0: recycled at every checkout."""
    engine = scene.engine(pool_size=1, max_overflow=0, pool_recycle=recycle)
    log = EventLog(engine.pool, scene.labels)
    seen = []
    for _ in range(3):
        with engine.connect() as conn:
            seen.append(scene.backend(conn))
        scene.runner.sleep(0.05)
    return {"backends": seen, "events": log.events, "status": engine.pool.status()}


@pytest.mark.db
@pytest.mark.parametrize("recycle", [-1, 0])
def test_pool_recycle(dsn: str, kind: str, mode: str, recycle: int) -> None:
    seen = side_by_side(dsn, kind, mode, scenario_recycle, recycle)
    assert seen["backends"] == ([0, 0, 0] if recycle == -1 else [0, 1, 2])


def scenario_reset_on_return(scene: Scene, reset: Any) -> dict[str, Any]:
    """What each pool_reset_on_return value does to a connection returned
    with an open transaction, through the pool (raw connection) and through
    an engine Connection; the reset event sees the same state."""
    table = scene.table()
    engine = scene.engine(pool_size=1, max_overflow=1, pool_reset_on_return=reset)
    log = EventLog(engine.pool, scene.labels)
    out: dict[str, Any] = {}

    raw = engine.raw_connection()
    first = scene.raw_backend(raw)
    cursor = raw.cursor()
    cursor.execute(f"insert into {table} values (1)")
    cursor.close()
    raw.close()  # the pool's reset on return
    with engine.connect() as conn:  # the same connection, next borrower
        out["next_borrower"] = (
            scene.backend(conn),
            conn.exec_driver_sql(f"select count(*) from {table}").scalar(),
        )
    out["committed_raw"] = scene.outside(f"select count(*) from {table}")

    with engine.connect() as conn:  # the Connection rolls back on close itself
        conn.exec_driver_sql(f"insert into {table} values (2)")
    out["committed_connection"] = scene.outside(f"select count(*) from {table}")
    out["first"] = first
    out["events"] = log.events
    out["status"] = engine.pool.status()
    return out


RESET_VALUES = ["rollback", "commit", None, False, True]


@pytest.mark.db
@pytest.mark.parametrize("reset", RESET_VALUES, ids=[str(v) for v in RESET_VALUES])
def test_pool_reset_on_return(dsn: str, kind: str, mode: str, reset: Any) -> None:
    seen = side_by_side(dsn, kind, mode, scenario_reset_on_return, reset)
    backend, count = seen["next_borrower"]
    assert backend == seen["first"]
    expected = {"rollback": (0, 0), "commit": (1, 1), None: (1, 0), False: (1, 0), True: (0, 0)}
    assert (count, seen["committed_raw"]) == expected[reset]
    assert seen["committed_connection"] == seen["committed_raw"]
    resets = [e for e in seen["events"] if e[0] == "reset"]
    assert resets[0][2:] == (False, False, True)  # raw: the pool resets
    assert resets[-1][2:] == (True, False, True)  # Connection: reset already


def scenario_use_lifo(scene: Scene, lifo: bool) -> list[int | None]:
    """Which idle connection each checkout gets."""
    engine = scene.engine(pool_size=3, max_overflow=0, pool_use_lifo=lifo)
    conns = [engine.connect() for _ in range(3)]
    for conn in conns:
        scene.backend(conn)
    for conn in conns:
        conn.close()
    again = [engine.connect() for _ in range(3)]
    order = [scene.backend(c) for c in again]
    for conn in again:
        conn.close()
    return order


@pytest.mark.db
@pytest.mark.parametrize("lifo", [False, True], ids=["fifo", "lifo"])
def test_pool_use_lifo(dsn: str, kind: str, mode: str, lifo: bool) -> None:
    order = side_by_side(dsn, kind, mode, scenario_use_lifo, lifo)
    assert order == ([2, 1, 0] if lifo else [0, 1, 2])


def scenario_pre_ping(scene: Scene, pre_ping: bool) -> dict[str, Any]:
    """A backend terminated while its connection is idle: with pre-ping the
    next checkout reconnects; without, the first statement fails and the
    connection is invalidated."""
    engine = scene.engine(pool_size=2, max_overflow=0, pool_pre_ping=pre_ping)
    log = EventLog(engine.pool, scene.labels)
    with engine.connect() as conn:
        pid = _pid(conn)
        first = scene.backends(pid)
    scene.terminate(pid)
    scene.runner.sleep(0.3)
    failure = None
    try:
        with engine.connect() as conn:
            second = scene.backend(conn)
    except sa.exc.DBAPIError as exc:
        failure = (type(exc).__name__, exc.connection_invalidated)
        with engine.connect() as conn:
            second = scene.backend(conn)
    return {
        "backends": [first, second],
        "failure": failure,
        "events": log.events,
        "status": engine.pool.status(),
    }


@pytest.mark.db
@pytest.mark.parametrize("pre_ping", [True, False], ids=["pre_ping", "no_pre_ping"])
def test_pool_pre_ping(dsn: str, kind: str, mode: str, pre_ping: bool) -> None:
    seen = side_by_side(dsn, kind, mode, scenario_pre_ping, pre_ping)
    assert seen["backends"] == [0, 1]
    assert (seen["failure"] is None) == pre_ping
    assert seen["status"] == STATUS.format(2, 1, -1, 0)


def scenario_logging(scene: Scene, echo: Any, name: str | None) -> list[tuple[str, str, str]]:
    """The pool's log records: checkout, checkin, reset, exhaustion,
    dispose and recreate."""
    level = logger_level("sqlalchemy.pool", logging.DEBUG) if echo is None else nullcontext()
    with capture_logs("sqlalchemy.pool", "pypool") as logs, level:
        engine = scene.engine(
            pool_size=1,
            max_overflow=1,
            pool_timeout=0.05,
            echo_pool=echo,
            pool_logging_name=name,
        )
        with engine.connect() as conn:
            conn.exec_driver_sql("select 1")
        held = [engine.connect(), engine.connect()]
        with pytest.raises(sa.exc.TimeoutError):
            engine.connect()
        for conn in held:
            conn.close()
        engine.dispose()
    return logs.records


ECHO_CASES = [
    pytest.param(True, None, id="echo"),
    pytest.param("debug", None, id="debug"),
    pytest.param("debug", "mine", id="debug-named"),
    pytest.param(None, "mine", id="logger-level-named"),
]


@pytest.mark.db
@pytest.mark.parametrize(("echo", "name"), ECHO_CASES)
def test_echo_pool_and_logging_name(
    dsn: str, kind: str, mode: str, echo: Any, name: str | None
) -> None:
    records = side_by_side(dsn, kind, mode, scenario_logging, echo, name)
    cls = "QueuePool" if mode == "sync" else "AsyncAdaptedQueuePool"
    logger = f"sqlalchemy.pool.impl.{cls}" + (f".{name}" if name else "")
    assert records and {r[0] for r in records} == {logger}
    messages = [r[2] for r in records]
    assert any(m.startswith("Pool disposed.") for m in messages)
    assert ("Pool recreating" in messages) and (
        any("checked out from pool" in m for m in messages) == (echo != True)  # noqa: E712
    )
