"""pypool.sqlalchemy against SQLAlchemy's own pools, with real engines.

Every scenario runs on pypool's pool classes (on both cores) and on
SQLAlchemy's ``QueuePool`` / ``AsyncAdaptedQueuePool``, and the observable
results (events, status, errors, what the database saw) must be the same.
The sqlite tests need no server; the others carry the ``db`` marker.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

sa = pytest.importorskip("sqlalchemy")
from sqlalchemy import event  # noqa: E402
from sqlalchemy import pool as sa_pool  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402

from conftest import import_native_core  # noqa: E402
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

POOL_EVENTS = (
    "connect",
    "first_connect",
    "checkout",
    "checkin",
    "reset",
    "invalidate",
    "soft_invalidate",
    "close",
    "close_detached",
    "detach",
)


class EventLog:
    """Records pool events, naming each DBAPI connection by first appearance."""

    def __init__(self, pool: Any) -> None:
        self.events: list[tuple[str, int | None]] = []
        self._seen: list[Any] = []  # kept alive so identities stay unique
        for name in POOL_EVENTS:
            event.listen(pool, name, self._listener(name))

    def _label(self, obj: Any) -> int | None:
        if obj is None:
            return None
        for i, seen in enumerate(self._seen):
            if seen is obj:
                return i
        self._seen.append(obj)
        return len(self._seen) - 1

    def _listener(self, name: str) -> Callable[..., None]:
        def listener(dbapi_connection: Any, *args: Any) -> None:
            self.events.append((name, self._label(dbapi_connection)))

        return listener

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.events if n == name)


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
    events = [name for name, _ in got[0]]
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


def test_connect_failure_frees_the_slot(poolclass: type, engines: list[Any]) -> None:
    failures = [True]

    def creator() -> Any:
        if failures:
            failures.pop()
            raise RuntimeError("connect failed")
        import sqlite3

        return sqlite3.connect(":memory:", check_same_thread=False)

    engine = sa.create_engine(
        "sqlite://",
        creator=creator,
        poolclass=poolclass,
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.1,
    )
    engines.append(engine)
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

    engine = sa.create_engine(
        "sqlite://",
        creator=creator,
        poolclass=poolclass,
        pool_size=1,
        max_overflow=0,
        pool_timeout=1.0,
    )
    engines.append(engine)
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
    __tablename__ = "pypool_sa_items"
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
