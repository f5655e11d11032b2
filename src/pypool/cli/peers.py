"""Contenders for ``pypool bench``: the full :class:`pypool.Pool` and the pools
people use today, measured in the same interleaved run as the core.

Importing this module registers them in :data:`pypool.cli.CONTENDERS` (the
CLI imports it right after :func:`pypool.cli.register`); :func:`register_all`
does the same for another registry.

======================  ==================================================================
contender               cycle (uncontended; threaded runs use the waiting form)
======================  ==================================================================
``pool-native``         ``c = pool.acquire(); pool.release(c)``: ``pypool.Pool`` on the
                        compiled core, every default policy on, fake connections
``pool-python``         the same on the pure-Python core
``pool-native-with``    ``with pool.connection(): pass`` on the compiled core
``sqlalchemy``          ``c = pool.connect(); c.close()``: SQLAlchemy ``QueuePool(creator,
                        pool_size=4, max_overflow=0)``, fake connections
``dbutils``             ``c = pool.connection(); c.close()``: DBUtils ``PooledDB``, fake
                        connections
``pool-native-pg``      as ``pool-native``, on real psycopg connections (needs a DSN)
``psycopg_pool``        ``c = pool.getconn(); pool.putconn(c)``: psycopg_pool
                        ``ConnectionPool(dsn, min_size=4, max_size=4)``, real connections
                        in autocommit (needs a DSN)
``psycopg2``            ``c = pool.getconn(); pool.putconn(c)``: psycopg2
                        ``ThreadedConnectionPool(4, 4, dsn)``, real connections (needs a
                        DSN; it cannot wait, so it takes no part in threaded runs)
======================  ==================================================================

The database contenders read their DSN from :data:`DSN`, or else from the
environment variable ``PYPOOL_BENCH_DSN``; without one they are skipped. A DSN
is never shown: errors pass through :func:`pypool.dbapi.mask_dsn`.

All pools hold :data:`pypool.cli.CONNECTIONS` connections (the ``connections``
argument of a setup) and are filled before they are measured, so no cycle
connects.
"""

from __future__ import annotations

import functools
import importlib
import operator
import os
import time
from collections.abc import Callable
from typing import Any, cast

from .contenders import Contender, Handles, core_check, register

__all__ = ["DSN", "DSN_ENV", "PEERS", "FakeDBAPIConnection", "FakeDBAPIModule", "register_all"]

#: The environment variable the database contenders read their DSN from.
DSN_ENV = "PYPOOL_BENCH_DSN"
#: The DSN of the database contenders; None: read :data:`DSN_ENV`.
DSN: str | None = None

#: How long a setup waits for its pool to hold every connection.
FILL_TIMEOUT = 10.0


def _dsn() -> str | None:
    return DSN or os.environ.get(DSN_ENV) or None


# ------------------------------------------------------------------ fakes


class FakeCursor:
    """The least of a DB-API cursor: ``execute``, ``fetchone``, ``fetchall``,
    ``close``. Only a generic check that finds no ``ping()`` would use one;
    no pool measured here does with the fakes below."""

    def execute(self, operation: str, parameters: Any = None) -> None:
        return None

    def fetchone(self) -> tuple[int]:
        return (1,)

    def fetchall(self) -> list[tuple[int]]:
        return [(1,)]

    def close(self) -> None:
        return None


class FakeDBAPIConnection:
    """A healthy DB-API 2 connection with no transaction open, doing no I/O.

    It implements what the pools measured here call on a connection:

    - ``rollback()``: the reset on return. ``pypool.dbapi`` does not know this
      class's driver, so its reset plan is ``"rollback"`` and the Pool calls
      ``rollback()`` on every release; SQLAlchemy's pool does the same
      (``reset_on_return="rollback"``), and DBUtils' ``PooledDB`` on every
      return (``reset=True``).
    - ``ping(reconnect=False)``: the check. ``pypool.dbapi`` pings a
      connection idle longer than ``check_after`` (1 s) before it is handed
      out; DBUtils pings on every checkout (its default ``ping=1``).
    - ``close()``, ``commit()``, ``cursor()``: the rest of DB-API 2 a pool may
      call when it retires or checks a connection.

    It is an ordinary class, so (like psycopg's and psycopg2's connections)
    it allows weak references, and the core tracks it as it would a real one.
    Every method returns at once: the benchmark measures the pools, not a
    database.
    """

    def __init__(self) -> None:
        self.closed = False

    def rollback(self) -> None:
        return None

    def commit(self) -> None:
        return None

    def ping(self, reconnect: bool = False) -> bool:
        return True

    def cursor(self) -> FakeCursor:
        return FakeCursor()

    def close(self) -> None:
        self.closed = True


def _fake_connect() -> FakeDBAPIConnection:
    """The factory of every fake pool."""
    return FakeDBAPIConnection()


class FakeDBAPIModule:
    """What DBUtils reads from a driver module (``creator.dbapi``): its
    ``connect``, its ``threadsafety`` (DBUtils refuses 0; 1, "threads may share
    the module, not connections", is what most drivers say) and the exception
    classes after which it reconnects."""

    connect = staticmethod(_fake_connect)
    threadsafety = 1

    class Error(Exception):
        pass

    class OperationalError(Error):
        pass

    class InterfaceError(Error):
        pass

    class InternalError(Error):
        pass


_fake_connect.dbapi = FakeDBAPIModule  # type: ignore[attr-defined]


# ------------------------------------------------------------------ helpers


def _needs(*modules: tuple[str, str]) -> Callable[[], str | None]:
    """A check: None when every module imports, else which package to install."""

    def check() -> str | None:
        for module, package in modules:
            try:
                importlib.import_module(module)
            except ImportError:
                return f"unavailable: pip install {package}"
        return None

    return check


def _needs_dsn(
    *modules: tuple[str, str], core: Callable[[], str | None] | None = None
) -> Callable[[], str | None]:
    have = _needs(*modules)

    def check() -> str | None:
        reason = (core and core()) or have()
        if reason is None and _dsn() is None:
            reason = f"no database: set {DSN_ENV} to a DSN"
        return reason

    return check


def masked(text: str) -> str:
    """``text`` without any piece of the password of the DSN in use."""
    from .._secrets import Secrets

    return Secrets(_dsn() or "").mask(text)


def _masked(setup: Callable[[int], Handles]) -> Callable[[int], Handles]:
    """``setup`` whose errors never show the DSN's password."""

    @functools.wraps(setup)
    def wrapper(connections: int) -> Handles:
        try:
            return setup(connections)
        except Exception as exc:
            raise RuntimeError(masked(f"{type(exc).__name__}: {exc}")) from None

    return wrapper


def _probe(connect: Callable[..., Any], dsn: str | None) -> None:
    """Connects once, so that an unusable database fails a setup at once
    (with the driver's error) rather than after the pool's retries."""
    connect(dsn, connect_timeout=3).close()


def _wait_idle(pool: Any, connections: int) -> None:
    deadline = time.monotonic() + FILL_TIMEOUT
    while pool.idle < connections:
        if time.monotonic() > deadline:
            pool.close()
            raise RuntimeError(f"the pool holds {pool.idle} of {connections} connections")
        time.sleep(0.001)


_close = operator.methodcaller("close")


# ------------------------------------------------------------------ pypool


def _pool(core: str, connections: int, factory: Callable[[], Any]) -> Any:
    """A ``pypool.Pool`` on the named core, with every default policy and the
    default adapter (``pypool.dbapi``), filled to ``connections``."""
    from ..pool import Pool

    module = importlib.import_module(core)
    pool = Pool.with_core(module)(factory, min_size=connections, max_size=connections)
    _wait_idle(pool, connections)
    return pool


def _pypool_setup(core: str) -> Callable[[int], Handles]:
    def setup(connections: int) -> Handles:
        pool = _pool(core, connections, _fake_connect)
        # Pool has no non-blocking checkout: acquire() is the uncontended one.
        return Handles(pool.acquire, pool.release, pool.acquire, pool.close)

    return setup


def _with_cycle(lease: Any) -> None:
    with lease:
        pass


def _pypool_with_setup(connections: int) -> Handles:
    pool = _pool("pypool._corepool", connections, _fake_connect)
    # The CLI times release(try_acquire()): here try_acquire() makes the
    # context manager (pool.connection()) and release() runs the ``with``
    # statement on it, which acquires and releases. The cycle is thus
    # ``with pool.connection(): pass`` plus one Python call (_with_cycle).
    return Handles(pool.connection, _with_cycle, pool.connection, pool.close)


def _pypool_pg_setup(connections: int) -> Handles:
    import psycopg

    from .. import dbapi

    dsn = _dsn()
    _probe(psycopg.connect, dsn)
    factory = dbapi.connect_factory(psycopg.connect, dsn, autocommit=True)
    pool = _pool("pypool._corepool", connections, factory)
    return Handles(pool.acquire, pool.release, pool.acquire, pool.close)


# ------------------------------------------------------------------ peers


def _sqlalchemy_setup(connections: int) -> Handles:
    from sqlalchemy.pool import QueuePool

    # SQLAlchemy's type for a creator is its DBAPIConnection protocol.
    pool = QueuePool(cast(Any, _fake_connect), pool_size=connections, max_overflow=0, timeout=30.0)
    # Connect them all now, so that no measured cycle connects.
    for c in [pool.connect() for _ in range(connections)]:
        c.close()

    def acquire(timeout: float) -> Any:  # QueuePool's wait is its own timeout
        return pool.connect()

    return Handles(pool.connect, _close, acquire, pool.dispose)


def _dbutils_setup(connections: int) -> Handles:
    from dbutils.pooled_db import PooledDB

    pool = PooledDB(
        _fake_connect,
        mincached=connections,
        maxcached=connections,
        maxconnections=connections,
        blocking=True,
    )

    def acquire(timeout: float) -> Any:  # PooledDB waits without a timeout
        return pool.connection()

    return Handles(pool.connection, _close, acquire, pool.close)


def _psycopg_pool_setup(connections: int) -> Handles:
    import psycopg
    from psycopg_pool import ConnectionPool

    _probe(psycopg.connect, _dsn())
    pool = ConnectionPool(
        _dsn() or "",
        min_size=connections,
        max_size=connections,
        open=True,
        kwargs={"autocommit": True},
    )
    try:
        pool.wait(timeout=FILL_TIMEOUT)
    except BaseException:
        pool.close()
        raise
    return Handles(pool.getconn, pool.putconn, pool.getconn, pool.close)


def _psycopg2_setup(connections: int) -> Handles:
    import psycopg2
    from psycopg2.pool import ThreadedConnectionPool

    _probe(psycopg2.connect, _dsn())
    pool = ThreadedConnectionPool(connections, connections, _dsn())
    # getconn() raises PoolError when all are out: it cannot wait.
    return Handles(pool.getconn, pool.putconn, None, pool.closeall)


_native = core_check("pypool._corepool")

#: The contenders this module adds, in table order.
PEERS: list[Contender] = [
    Contender(
        "pool-native",
        "pypool.Pool, compiled core, default policies: acquire() / release()",
        _pypool_setup("pypool._corepool"),
        _native,
    ),
    Contender(
        "pool-python",
        "pypool.Pool, pure-Python core, default policies: acquire() / release()",
        _pypool_setup("pypool._corepool_py"),
    ),
    Contender(
        "pool-native-with",
        "pypool.Pool, compiled core: with pool.connection(): pass",
        _pypool_with_setup,
        _native,
    ),
    Contender(
        "sqlalchemy",
        "SQLAlchemy QueuePool(pool_size=4, max_overflow=0): connect() / close()",
        _sqlalchemy_setup,
        _needs(("sqlalchemy", "SQLAlchemy")),
    ),
    Contender(
        "dbutils",
        "DBUtils PooledDB(maxconnections=4, blocking=True): connection() / close()",
        _dbutils_setup,
        _needs(("dbutils.pooled_db", "DBUtils")),
    ),
    Contender(
        "pool-native-pg",
        "pypool.Pool, compiled core, psycopg connections: acquire() / release()",
        _masked(_pypool_pg_setup),
        _needs_dsn(("psycopg", "psycopg[binary]"), core=_native),
    ),
    Contender(
        "psycopg_pool",
        "psycopg_pool ConnectionPool(min_size=4, max_size=4): getconn() / putconn()",
        _masked(_psycopg_pool_setup),
        _needs_dsn(("psycopg", "psycopg[binary]"), ("psycopg_pool", "psycopg-pool")),
    ),
    Contender(
        "psycopg2",
        "psycopg2 ThreadedConnectionPool(4, 4): getconn() / putconn()",
        _masked(_psycopg2_setup),
        _needs_dsn(("psycopg2", "psycopg2-binary")),
    ),
]


def register_all(register: Callable[[Contender], None] = register) -> None:
    """Registers every contender of :data:`PEERS` with ``register``."""
    for contender in PEERS:
        register(contender)


register_all()
