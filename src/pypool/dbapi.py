"""The generic DB-API 2 adapter: driver knowledge for blocking connections.

Pass the module itself to the pool (``Pool(factory, adapter=pypool.dbapi)``): the
module-level functions below are the adapter interface, and they delegate to one
default :class:`DBAPIAdapter`. Driver-specific adapters (``pypool.psycopg``, ...)
subclass :class:`DBAPIAdapter` and override what they know better.

The interface
=============

``reset_for(conn)``
    The reset plan for connections like ``conn``, asked once per pool: the string
    ``"rollback"`` (the pool calls ``conn.rollback()`` itself, its fastest path), a
    function ``reset(conn)``, or ``None`` (no reset). A reset either leaves no open
    or failed transaction behind or raises, and the pool then discards the
    connection.
``check(conn, timeout=None)``
    Raises if the connection is unusable; leaves it as it was (no transaction
    left open). With ``timeout``, the check gives up after that many seconds
    for the drivers whose socket it knows (psycopg 3, psycopg2, PyMySQL) and
    the connection is then unusable: the pool passes what is left of the
    caller's acquire timeout, so a server or network that stopped answering
    cannot outlast it. For other drivers ``timeout`` bounds nothing.
``is_broken(conn, exc=None)``
    True when the connection must be discarded, False when only a query failed.
``watch(conn, timeout)`` (optional)
    Bounds a ``check=`` of the user's to ``timeout`` seconds by the driver's
    means: returns a function to call when the check ends (True if the bound
    was reached), or None. For psycopg 3, psycopg2 and PyMySQL, the
    connection's socket is shut down at the deadline, so the check fails at
    once there. Other drivers (sqlite3, and any driver this module does not
    know, whose socket it cannot find) have no such means: the pool runs the
    user's check in a thread of its own, and a caller whose timeout comes
    first gets :class:`~pypool.PoolTimeout` while the check ends elsewhere
    and its connection is closed then.
``close(conn)``
    Closes; an error is logged (logger ``"pypool"``, level WARNING), never raised.
``connect_factory(connect, *args, connect_timeout=10.0, io_timeout=30.0, **kwargs)``
    A zero-argument factory for ``Pool(factory, ...)`` that calls
    ``connect(*args, **kwargs)`` with the driver's time bounds added.

What reset and check do
=======================

=========  =====================================  ==========================================
driver     reset (on every return to the pool)    check (before hand-out, when idle long)
=========  =====================================  ==========================================
sqlite3    ``rollback()`` if ``in_transaction``;  ``SELECT 1``; raises once closed.
           raises once closed (no round trip).
psycopg 3  ``rollback()`` if libpq's transaction  An empty query in autocommit (as
           status is INTRANS or INERROR, nothing  psycopg_pool's ``check_connection``):
           if IDLE (read locally); raises if the  one round trip, no transaction. With a
           connection is closed or broken, or a   timeout, sent through libpq directly
           command is in progress (ACTIVE).       and waited for with ``select()``.
psycopg2   as psycopg 3, from                     ``SELECT 1`` in autocommit (switching
           ``get_transaction_status()`` and       autocommit costs no round trip).
           ``closed``.                            With a timeout, its socket is shut
                                                  down if it has not answered by then.
PyMySQL    raises if not ``open``; no round trip  ``ping(reconnect=False)``; with a
           only in autocommit mode with no        timeout, its socket is shut down if
           transaction flagged (see below); else  it has not answered by then.
           ``rollback()``.
other      ``"rollback"`` (the pool calls         ``ping()`` if the connection has one, else
           ``conn.rollback()``).                  a cursor ``SELECT 1``, then a rollback
                                                  unless ``conn.autocommit`` is True.
=========  =====================================  ==========================================

A reset ends the transaction, nothing more. It does not clear session state:
settings made with ``SET``, temporary tables, prepared statements, ``LISTEN``
registrations, advisory or named locks (``pg_advisory_lock``, MySQL
``GET_LOCK``), MySQL ``LOCK TABLES``, user variables, the current schema or
database all survive it and reach the next borrower. Clearing them (``DISCARD
ALL``, ``COM_RESET_CONNECTION``) costs a round trip and invalidates
driver-side caches; it belongs to a driver-specific hygiene policy, not to this
module. sqlite3 in the ``autocommit=False`` mode of Python 3.12+ always has a
transaction open by design: its reset rolls back, which opens a new, empty one.

PyMySQL keeps ``server_status`` from the last OK or EOF packet, and its
``SERVER_STATUS_IN_TRANS`` bit is *not* a reliable "a transaction is open" when
autocommit is off: a transaction that has only read (and holds a snapshot)
is not flagged, and an error packet carries no status, so a statement that
starts a transaction and then fails (a duplicate key in a multi-row INSERT)
leaves the stale "no transaction" flag behind. So with autocommit off (PyMySQL's
default) the reset always rolls back (one round trip). With autocommit on, a
transaction can only start with an explicit ``BEGIN`` / ``START TRANSACTION``
(or ``SET autocommit=0``), whose OK packet does update the flags; the reset
skips the round trip when the AUTOCOMMIT bit is set and neither IN_TRANS,
IN_TRANS_READONLY nor MORE_RESULTS_EXISTS is, and no unbuffered result is
pending.

What is bounded in time
=======================

``connect_factory`` adds these (a value the caller passed wins: a keyword
argument, a keyword in a DSN string, or ``PGCONNECT_TIMEOUT`` for libpq):

=========  =================================================================
driver     keyword arguments added
=========  =================================================================
psycopg 3  ``connect_timeout`` (whole seconds, at least 2, as libpq wants);
psycopg2   with ``io_timeout``: ``keepalives=1``, ``keepalives_idle`` (half of
           it), ``keepalives_interval`` and ``keepalives_count=3`` (the rest),
           so a dead peer of an idle connection is noticed within about
           ``io_timeout``; ``tcp_user_timeout`` (milliseconds, libpq 12+), so
           data the peer never acknowledges fails the call after
           ``io_timeout``. A long query on a healthy network is not cut off.
PyMySQL    ``connect_timeout``; with ``io_timeout``: ``read_timeout`` and
           ``write_timeout``. PyMySQL waits for the server's greeting under
           ``read_timeout``, so the connect runs with ``read_timeout`` no longer
           than ``connect_timeout`` and the connection takes ``io_timeout``
           once connected. Note that ``read_timeout`` bounds every wait for
           the server, so a query running longer than ``io_timeout`` fails with
           error 2013 and its connection is discarded: raise ``io_timeout`` (or
           pass ``None``) for long queries.
sqlite3    ``timeout`` (the busy timeout: how long a statement waits for a
           lock) from ``io_timeout``, and ``check_same_thread=False``: the
           pool connects on a worker thread and hands connections to other
           threads, one at a time.
other      nothing: the arguments pass through unchanged, and the pool cannot
           bound the driver's I/O. Use the driver's own timeout options (best
           effort); a check or reset may then block as long as the driver does.
=========  =================================================================

The driver of ``connect`` is told from ``connect.__module__`` (``psycopg.*``,
``psycopg2.*``, ``pymysql.*``, ``sqlite3``), so a wrapper keeps the detection if
it copies ``__module__`` (``functools.wraps`` does). The driver of a connection
is told from the modules of its class and base classes.

Heuristics
==========

``is_broken`` trusts what a known driver records: psycopg 3 ``broken`` or
``closed``; psycopg2 ``closed`` (2 after a lost connection); PyMySQL ``not
open``, or an ``exc`` that is its ``InterfaceError`` or carries a
connection-lost code (1053, 1927, 2003, 2006, 2013, 2014, 2055, 4031); sqlite3
closed. For other drivers a connection is broken when its ``closed`` attribute
is truthy, or when ``exc`` is an ``InterfaceError`` or an ``OperationalError``
(matched by class name anywhere in its class hierarchy, since every DB-API
driver defines its own). That second rule may discard a good connection (an
``OperationalError`` can be a lock timeout or a cancelled statement), which
costs a reconnect; keeping a broken one would cost the next borrower an error.
No reset can notice a connection the server closed while it sat idle without a
round trip: that is what ``check`` (with the pool's ``check_after``) is for.

Passwords
=========

Texts this module logs or raises pass through :func:`mask_dsn`. A factory made
by ``connect_factory`` knows the passwords among its arguments
(:class:`Secrets`): the errors of its connects are raised with every piece of
them masked (message, args and chained causes: a malformed DSN makes libpq
repeat a piece of the password), and its repr shows none. The pool does the
same with what it logs and raises for a failed connect, for these factories
and for a ``functools.partial`` of a driver's connect.
"""

from __future__ import annotations

import functools
import heapq
import inspect
import itertools
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias

from ._secrets import Secrets, mask_dsn, masked_repr
from .errors import UnusableConnection
from .pool.shared import run_watched

__all__ = [
    "ConnectFactory",
    "DBAPIAdapter",
    "ResetPlan",
    "Secrets",
    "UnusableConnection",
    "check",
    "close",
    "connect_factory",
    "is_broken",
    "mask_dsn",
    "reset_for",
    "watch",
]

logger = logging.getLogger("pypool")

#: What ``reset_for`` returns: ``"rollback"``, a function ``reset(conn)``, or None.
ResetPlan: TypeAlias = "str | Callable[[Any], None] | None"


# ------------------------------------------------------------------ drivers

SQLITE3: Final = "sqlite3"
PSYCOPG: Final = "psycopg"
PSYCOPG2: Final = "psycopg2"
PYMYSQL: Final = "pymysql"
_KNOWN = frozenset({SQLITE3, PSYCOPG, PSYCOPG2, PYMYSQL})

# libpq PGTransactionStatusType (psycopg 3 TransactionStatus, psycopg2
# TRANSACTION_STATUS_*): the same numbers in both drivers.
_PQ_IDLE: Final = 0
_PQ_INTRANS: Final = 2
_PQ_INERROR: Final = 3
_PQ_STATUS_NAMES: Final = {0: "IDLE", 1: "ACTIVE", 2: "INTRANS", 3: "INERROR", 4: "UNKNOWN"}

# MySQL server status flags (pymysql.constants.SERVER_STATUS).
_MY_IN_TRANS: Final = 0x0001
_MY_AUTOCOMMIT: Final = 0x0002
_MY_MORE_RESULTS: Final = 0x0008
_MY_IN_TRANS_READONLY: Final = 0x2000
_MY_NEEDS_ROLLBACK: Final = _MY_IN_TRANS | _MY_MORE_RESULTS | _MY_IN_TRANS_READONLY

#: MySQL / MariaDB error codes that mean the connection is gone.
MYSQL_CONNECTION_LOST_CODES: Final = frozenset(
    {
        1053,  # ER_SERVER_SHUTDOWN
        1927,  # ER_CONNECTION_KILLED (MariaDB)
        2003,  # CR_CONN_HOST_ERROR
        2006,  # CR_SERVER_GONE_ERROR
        2013,  # CR_SERVER_LOST
        2014,  # CR_COMMANDS_OUT_OF_SYNC: the protocol state is lost
        2055,  # CR_SERVER_LOST_EXTENDED
        4031,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
    }
)


def _package(module: object) -> str:
    """``"psycopg"`` for ``"psycopg.connection"``, ``"sqlite3"`` for ``"_sqlite3"``."""
    if not isinstance(module, str):
        return ""
    return module.partition(".")[0].lstrip("_")


def driver_of_connection(conn: Any) -> str | None:
    """The known driver whose class (or a base class of it) made ``conn``."""
    for cls in type(conn).__mro__:
        package = _package(cls.__module__)
        if package in _KNOWN:
            return package
    return None


def driver_of_connect(connect: Callable[..., Any]) -> str | None:
    """The known driver of a connect function, from its ``__module__``."""
    target: Any = connect
    while isinstance(target, functools.partial):
        target = target.func
    package = _package(getattr(target, "__module__", None))
    return package if package in _KNOWN else None


# ------------------------------------------------------------------ resets
# Plain functions, not methods: the pool calls one on every return.


def _reset_sqlite3(conn: Any) -> None:
    """Rolls back an open transaction. Raises ``sqlite3.ProgrammingError``
    once the connection is closed (``in_transaction`` does)."""
    if conn.in_transaction:
        conn.rollback()
        # With autocommit=True (3.12+) rollback() does nothing, even inside a
        # transaction the application began with BEGIN; with autocommit=False
        # a new, empty transaction is opened at once, by design.
        if conn.in_transaction and getattr(conn, "autocommit", None) is not False:
            conn.execute("ROLLBACK")


def _reset_psycopg(conn: Any) -> None:
    """Rolls back an open or failed transaction, read from libpq without a
    round trip; raises if the connection is closed, broken or busy."""
    pgconn = conn.pgconn
    status = pgconn.transaction_status
    if status == _PQ_IDLE:
        return
    if status in (_PQ_INTRANS, _PQ_INERROR):
        conn.rollback()
        status = pgconn.transaction_status
        if status == _PQ_IDLE:
            return
    raise UnusableConnection(
        f"psycopg connection returned in transaction status {_PQ_STATUS_NAMES.get(status, status)}"
        " (closed, broken or busy): discarded"
    )


def _reset_psycopg2(conn: Any) -> None:
    """As :func:`_reset_psycopg`, for psycopg2."""
    if conn.closed:
        raise UnusableConnection("psycopg2 connection is closed: discarded")
    status = conn.get_transaction_status()
    if status == _PQ_IDLE:
        return
    if status in (_PQ_INTRANS, _PQ_INERROR):
        conn.rollback()
        status = conn.get_transaction_status()
        if status != _PQ_IDLE and not conn.closed:
            # In autocommit mode psycopg2's rollback() ignores a transaction
            # the application began with an explicit BEGIN.
            with conn.cursor() as cur:
                cur.execute("ROLLBACK")
            status = conn.get_transaction_status()
        if status == _PQ_IDLE:
            return
    raise UnusableConnection(
        f"psycopg2 connection returned in transaction status "
        f"{_PQ_STATUS_NAMES.get(status, status)} (broken or busy): discarded"
    )


def _reset_pymysql(conn: Any) -> None:
    """Rolls back unless autocommit is on and no transaction is flagged;
    raises if the connection is closed. See the module docstring for why the
    flags are trusted only in autocommit mode."""
    if not conn.open:
        raise UnusableConnection("PyMySQL connection is closed: discarded")
    status = conn.server_status
    if status & _MY_AUTOCOMMIT and not status & _MY_NEEDS_ROLLBACK:
        pending = getattr(conn, "_result", None)
        if pending is None or not getattr(pending, "unbuffered_active", False):
            return
    conn.rollback()


# ------------------------------------------------------------------ checks


def _check_psycopg(conn: Any, timeout: float | None = None) -> None:
    if conn.closed or conn.broken:
        raise UnusableConnection("psycopg connection is closed or broken")
    if timeout is not None:
        _ping_psycopg(conn, timeout)
        return
    # psycopg_pool's check_connection: an empty query, in autocommit so that it
    # opens no transaction (switching autocommit is local, no round trip).
    if conn.autocommit or conn.pgconn.transaction_status != _PQ_IDLE:
        conn.execute("")
        return
    conn.autocommit = True
    try:
        conn.execute("")
    finally:
        if not conn.closed:
            conn.autocommit = False


def _ping_psycopg(conn: Any, timeout: float) -> None:
    """An empty query through libpq, answered within ``timeout`` seconds.

    Sent below psycopg's own command machinery, so it opens no transaction
    whatever the autocommit setting. A connection that does not answer in
    time is left mid-command: the caller must discard it (the pool does).
    """
    import select

    from psycopg import pq

    pgconn = conn.pgconn
    deadline = time.monotonic() + timeout
    with conn.lock:
        pgconn.send_query(b"")
        while pgconn.flush():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [pgconn.socket], [], remaining)[1]:
                raise UnusableConnection(f"check could not send within {timeout:.3f} s")
        while True:
            pgconn.consume_input()
            if not pgconn.is_busy():
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([pgconn.socket], [], [], remaining)[0]:
                raise UnusableConnection(f"check got no answer within {timeout:.3f} s")
        ok = (pq.ExecStatus.EMPTY_QUERY, pq.ExecStatus.COMMAND_OK)
        while (result := pgconn.get_result()) is not None:
            if result.status not in ok:
                message = (result.error_message or b"").decode("utf-8", "replace").strip()
                raise UnusableConnection(f"check failed: {mask_dsn(message)}")


def _check_psycopg2(conn: Any, timeout: float | None = None) -> None:
    if conn.closed:
        raise UnusableConnection("psycopg2 connection is closed")

    def select_one() -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()

    def in_autocommit() -> None:
        if conn.autocommit or conn.get_transaction_status() != _PQ_IDLE:
            select_one()
            return
        conn.autocommit = True  # local: psycopg2 sends BEGIN itself, later
        try:
            select_one()
        finally:
            if not conn.closed:
                conn.autocommit = False

    # psycopg2 has no time bound of its own for one call: the watchdog
    # shuts the socket down at the deadline.
    run_watched(in_autocommit, _watch_psycopg2(conn, timeout), timeout)


def _check_sqlite3(conn: Any, timeout: float | None = None) -> None:
    # A SELECT opens no transaction in sqlite3's default (legacy) mode.
    conn.execute("SELECT 1").close()


def _check_pymysql(conn: Any, timeout: float | None = None) -> None:
    # Not the socket's timeout: PyMySQL sets its own read_timeout or
    # write_timeout on the socket whenever they differ, before a read or a
    # write, so a timeout set for the ping alone may not hold.
    def ping() -> None:
        conn.ping(reconnect=False)

    run_watched(ping, _watch_pymysql(conn, timeout), timeout)


def _check_generic(conn: Any, timeout: float | None = None) -> None:
    ping = getattr(conn, "ping", None)
    if callable(ping):
        if ping() is False:
            raise UnusableConnection(f"{type(conn).__name__}.ping() returned False")
        return
    cur = conn.cursor()
    try:
        cur.execute("SELECT 1")
        cur.fetchall()
    finally:
        cur.close()
    if getattr(conn, "autocommit", None) is not True:
        conn.rollback()


# ------------------------------------------------------------------ watch

_RUNNING: Final = 0
_DONE: Final = 1
_CUT: Final = 2


class _SocketWatchdog:
    """One daemon thread that shuts down the socket of a connection still
    busy at its deadline (see :func:`watch`): the driver's wait then ends at
    once with a closed-connection error, whatever the network does (a
    black hole, or a server that accepted and never answers).

    A watch costs a lock and a heap push; the thread starts at the first
    watch, sleeps until the earliest deadline, and, in a forked child, is
    forgotten with the parent's watches."""

    def __init__(self) -> None:
        self._fresh()

    def _fresh(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, list[Any]]] = []
        self._live = 0
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, fileno: Callable[[], int], timeout: float) -> list[Any]:
        """Shuts down the socket ``fileno()`` names in ``timeout`` seconds,
        unless :meth:`done` comes first."""
        entry: list[Any] = [fileno, _RUNNING]
        deadline = time.monotonic() + timeout
        with self._cond:
            heap = self._heap
            if len(heap) > 64 and len(heap) > 2 * self._live:
                heap[:] = [item for item in heap if item[2][1] == _RUNNING]
                heapq.heapify(heap)
            heapq.heappush(heap, (deadline, next(self._seq), entry))
            self._live += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pypool.dbapi.watchdog", daemon=True
                )
                self._thread.start()
            elif heap[0][2] is entry:
                self._cond.notify()
        return entry

    def done(self, entry: list[Any]) -> bool:
        """Ends a watch; True if the deadline came first (the socket is shut)."""
        with self._cond:
            state: int = entry[1]
            if state == _RUNNING:
                entry[1] = _DONE
                self._live -= 1
        return state == _CUT

    def _run(self) -> None:
        cond = self._cond
        with cond:
            heap = self._heap
            while True:
                while heap and heap[0][2][1] != _RUNNING:
                    heapq.heappop(heap)
                if not heap:
                    cond.wait()
                    continue
                delay = heap[0][0] - time.monotonic()
                if delay > 0:
                    cond.wait(delay)
                    continue
                entry = heapq.heappop(heap)[2]
                entry[1] = _CUT
                self._live -= 1
                _shut(entry[0])  # under the lock: the watched side is still in its check


def _shut(fileno: Callable[[], int]) -> None:
    """Shuts down (both ways) the socket whose descriptor ``fileno()``
    gives, leaving the descriptor open: its owner's next read or write sees
    the end of the connection. Nothing if ``fileno()`` raises or gives a
    negative number (the connection was closed meanwhile)."""
    try:
        sock = socket.socket(fileno=os.dup(fileno()))
    except Exception:  # closed (its descriptor may be another socket's now)
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


_watchdog = _SocketWatchdog()


def _watching(fileno: Callable[[], int], timeout: float) -> Callable[[], bool] | None:
    if not math.isfinite(timeout):
        return None
    entry = _watchdog.watch(fileno, timeout)
    return functools.partial(_watchdog.done, entry)


# Each returns None where whatever is done with the connection fails at once
# (it is closed), or where the timeout bounds nothing (None or infinite).


def _watch_psycopg(conn: Any, timeout: float | None) -> Callable[[], bool] | None:
    pgconn = getattr(conn, "pgconn", None)
    if timeout is None or pgconn is None or conn.closed:
        return None
    return _watching(lambda: int(pgconn.socket), timeout)


def _watch_psycopg2(conn: Any, timeout: float | None) -> Callable[[], bool] | None:
    if timeout is None or conn.closed:
        return None
    return _watching(conn.fileno, timeout)  # raises once closed


def _watch_pymysql(conn: Any, timeout: float | None) -> Callable[[], bool] | None:
    # The socket object, not its descriptor now: once PyMySQL closes it (a
    # failed read or write does), its fileno() is -1, so a descriptor
    # reused by another socket meanwhile is never shut.
    sock = getattr(conn, "_sock", None)
    if timeout is None or sock is None or sock.fileno() < 0:
        return None
    return _watching(sock.fileno, timeout)


_WATCHES: Final[Mapping[str, Callable[[Any, float | None], Callable[[], bool] | None]]] = {
    PSYCOPG: _watch_psycopg,
    PSYCOPG2: _watch_psycopg2,
    PYMYSQL: _watch_pymysql,
}


# ------------------------------------------------------------------ broken


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _broken_psycopg(conn: Any, exc: BaseException | None) -> bool:
    return bool(conn.broken or conn.closed)


def _broken_psycopg2(conn: Any, exc: BaseException | None) -> bool:
    return bool(conn.closed)


def _broken_sqlite3(conn: Any, exc: BaseException | None) -> bool:
    try:
        conn.in_transaction  # noqa: B018 - raises once the connection is closed
    except Exception:
        return True
    return False


def _broken_pymysql(conn: Any, exc: BaseException | None) -> bool:
    if not conn.open:
        return True
    if exc is None:
        return False
    names = _class_names(exc)
    if "InterfaceError" in names:
        return True
    if "OperationalError" in names or "InternalError" in names:
        args: tuple[Any, ...] = exc.args
        return bool(args) and args[0] in MYSQL_CONNECTION_LOST_CODES
    return False


def _broken_generic(conn: Any, exc: BaseException | None) -> bool:
    try:
        if getattr(conn, "closed", False):
            return True
    except Exception:  # a property that fails on a dead connection
        return True
    if exc is None:
        return False
    names = _class_names(exc)
    return "InterfaceError" in names or "OperationalError" in names


# ------------------------------------------------------------------ factory

# Parameter names of a driver's connect, in positional order: a bound given
# positionally counts as passed.
_POSITIONAL: Final[Mapping[str, tuple[str, ...]]] = {
    SQLITE3: ("database", "timeout", "detect_types", "isolation_level", "check_same_thread"),
    PSYCOPG: ("conninfo",),
    PSYCOPG2: ("dsn",),
    PYMYSQL: (),
}


class ConnectFactory:
    """A zero-argument callable that calls ``connect(*args, **kwargs)``.

    ``kwargs`` holds the caller's keyword arguments plus the time bounds the
    adapter added; ``added`` names the added ones. ``secrets`` are the
    passwords among the arguments (:class:`Secrets`): an error of the connect
    is raised with every piece of them masked, in its message, its args and
    its chained causes, and the repr shows none.
    """

    __slots__ = (
        "__weakref__",
        "added",
        "args",
        "connect",
        "driver",
        "kwargs",
        "read_timeout",
        "secrets",
    )

    def __init__(
        self,
        connect: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        driver: str | None,
        added: frozenset[str] = frozenset(),
        read_timeout: float | None = None,
    ) -> None:
        self.connect = connect
        self.args = args
        self.kwargs = kwargs
        self.driver = driver
        self.added = added
        #: PyMySQL only: the ``read_timeout`` the connection gets once
        #: connected, when the connect ran with a shorter one (see __call__).
        self.read_timeout = read_timeout
        self.secrets = Secrets(*args, **kwargs)

    def __call__(self) -> Any:
        try:
            conn = self.connect(*self.args, **self.kwargs)
        except Exception as exc:
            self.secrets.scrub(exc)
            raise
        if self.read_timeout is not None and hasattr(conn, "_read_timeout"):
            # PyMySQL waits for the server's greeting under read_timeout,
            # not connect_timeout, so the connect ran with the shorter of
            # the two; every later read takes the I/O bound. PyMySQL reads
            # this attribute before each read and applies it to the socket.
            conn._read_timeout = self.read_timeout
        return conn

    def __repr__(self) -> str:
        target: Any = self.connect
        name = getattr(target, "__qualname__", None) or type(target).__name__
        module = getattr(target, "__module__", None)
        if module:
            name = f"{module}.{name}"
        mask = self.secrets.mask
        params = [mask(masked_repr(None, a)) for a in self.args]
        params += [f"{k}={mask(masked_repr(k, v))}" for k, v in self.kwargs.items()]
        return f"<pypool.dbapi.ConnectFactory {name}({', '.join(params)})>"


def _libpq_version(driver: str) -> int:
    try:
        if driver == PSYCOPG:
            return int(sys.modules["psycopg"].pq.version())
        return int(sys.modules["psycopg2"].extensions.libpq_version())
    except Exception:
        return 0


def dsn_keys(driver: str, dsn: object) -> frozenset[str]:
    """The keywords a libpq DSN string sets (empty if it cannot be parsed)."""
    if not isinstance(dsn, str) or not dsn:
        return frozenset()
    try:
        if driver == PSYCOPG:
            from psycopg.conninfo import conninfo_to_dict

            return frozenset(conninfo_to_dict(dsn))
        from psycopg2.extensions import parse_dsn

        return frozenset(parse_dsn(dsn))
    except Exception:  # the driver will report a bad DSN when connecting
        return frozenset()


def _libpq_bounds(
    driver: str, connect_timeout: float | None, io_timeout: float | None
) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    if connect_timeout is not None and "PGCONNECT_TIMEOUT" not in os.environ:
        bounds["connect_timeout"] = max(2, math.ceil(connect_timeout))
    if io_timeout is not None:
        count = 3
        idle = max(1, int(io_timeout // 2))
        interval = max(1, int((io_timeout - idle) // count))
        bounds.update(
            keepalives=1,
            keepalives_idle=idle,
            keepalives_interval=interval,
            keepalives_count=count,
        )
        if _libpq_version(driver) >= 120000:
            bounds["tcp_user_timeout"] = max(1, int(io_timeout * 1000))
    return bounds


# ------------------------------------------------------------------ adapter


class DBAPIAdapter:
    """Driver knowledge for blocking DB-API 2 connections.

    The methods are the adapter interface; ``pypool.dbapi``'s module-level
    functions delegate to one default instance. Subclass it to teach the pool
    about another driver, or to change what a known one does.
    """

    name = "dbapi"

    _resets: Mapping[str, Callable[[Any], None]] = {
        SQLITE3: _reset_sqlite3,
        PSYCOPG: _reset_psycopg,
        PSYCOPG2: _reset_psycopg2,
        PYMYSQL: _reset_pymysql,
    }
    _checks: Mapping[str, Callable[[Any, float | None], None]] = {
        SQLITE3: _check_sqlite3,
        PSYCOPG: _check_psycopg,
        PSYCOPG2: _check_psycopg2,
        PYMYSQL: _check_pymysql,
    }
    _broken: Mapping[str, Callable[[Any, BaseException | None], bool]] = {
        SQLITE3: _broken_sqlite3,
        PSYCOPG: _broken_psycopg,
        PSYCOPG2: _broken_psycopg2,
        PYMYSQL: _broken_pymysql,
    }

    def driver(self, conn: Any) -> str | None:
        """The known driver of ``conn`` (``"psycopg"``, ``"psycopg2"``,
        ``"pymysql"``, ``"sqlite3"``), or None."""
        return driver_of_connection(conn)

    def reset_for(self, conn: Any) -> ResetPlan:
        """The reset plan for connections like ``conn``: ``"rollback"`` or a
        function ``reset(conn)`` that raises when the connection must go."""
        rollback = getattr(type(conn), "rollback", None)
        if inspect.iscoroutinefunction(rollback):
            raise TypeError(
                f"{type(conn).__name__} is an asyncio connection: pypool.dbapi handles"
                " blocking connections only"
            )
        driver = self.driver(conn)
        if driver is None:
            return "rollback"
        return self._resets[driver]

    def check(self, conn: Any, timeout: float | None = None) -> None:
        """Raises if ``conn`` is unusable; leaves no transaction open. With
        ``timeout``, gives up after that many seconds where the driver allows
        (psycopg 3, psycopg2, PyMySQL; then the connection is unusable)."""
        driver = self.driver(conn)
        (_check_generic if driver is None else self._checks[driver])(conn, timeout)

    def watch(self, conn: Any, timeout: float) -> Callable[[], bool] | None:
        """Bounds, by the driver's means, what is done with ``conn`` from now
        on to ``timeout`` seconds (the pool calls it around a ``check=`` of
        the user's); returns the function to call when that is done, which
        says True if the bound was reached (the connection is then unusable:
        its socket is shut down, so that a wait for the server ends at once).
        The means: the socket of a psycopg 3 (``pgconn.socket``), psycopg2
        (``fileno()``) or PyMySQL (``_sock``) connection. None for other
        drivers (sqlite3 has no socket; an unknown driver's is not known),
        for a closed connection (whatever is done with it fails at once) and
        for an infinite ``timeout``: the pool then runs the check in a thread
        of its own and leaves it at the deadline."""
        watch = _WATCHES.get(self.driver(conn) or "")
        return None if watch is None else watch(conn, timeout)

    def is_broken(self, conn: Any, exc: BaseException | None = None) -> bool:
        """True if ``conn`` must be discarded (after ``exc``, if given); False
        if it is fine and only a query failed."""
        driver = self.driver(conn)
        return (_broken_generic if driver is None else self._broken[driver])(conn, exc)

    def close(self, conn: Any) -> None:
        """Closes ``conn``; an error is logged, not raised."""
        try:
            conn.close()
        except Exception as exc:
            logger.warning(
                "error closing a %s connection: %s: %s",
                type(conn).__name__,
                type(exc).__name__,
                mask_dsn(str(exc)),
            )

    def time_bounds(
        self,
        driver: str | None,
        connect_timeout: float | None,
        io_timeout: float | None,
    ) -> dict[str, Any]:
        """The keyword arguments that bound ``driver``'s connect and I/O."""
        if driver in (PSYCOPG, PSYCOPG2):
            return _libpq_bounds(driver, connect_timeout, io_timeout)
        if driver == PYMYSQL:
            bounds: dict[str, Any] = {}
            if connect_timeout is not None:
                bounds["connect_timeout"] = connect_timeout
            if io_timeout is not None:
                bounds["read_timeout"] = io_timeout
                bounds["write_timeout"] = io_timeout
            return bounds
        if driver == SQLITE3:
            bounds = {"check_same_thread": False}
            if io_timeout is not None:
                bounds["timeout"] = io_timeout
            return bounds
        return {}

    def connect_factory(
        self,
        connect: Callable[..., Any],
        *args: Any,
        connect_timeout: float | None = 10.0,
        io_timeout: float | None = 30.0,
        **kwargs: Any,
    ) -> ConnectFactory:
        """A zero-argument factory calling ``connect(*args, **kwargs)`` with the
        driver's time bounds added where the caller gave none."""
        for label, value in (("connect_timeout", connect_timeout), ("io_timeout", io_timeout)):
            if value is not None and not value > 0:
                raise ValueError(f"{label} must be a positive number or None, not {value!r}")
        driver = driver_of_connect(connect)
        bounds = self.time_bounds(driver, connect_timeout, io_timeout)
        given = set(kwargs)
        given.update(_POSITIONAL.get(driver or "", ())[: len(args)])
        if driver in (PSYCOPG, PSYCOPG2):
            dsn = args[0] if args else kwargs.get("conninfo" if driver == PSYCOPG else "dsn")
            given.update(dsn_keys(driver, dsn))
        added = {key: value for key, value in bounds.items() if key not in given}
        read_timeout = None
        if (
            driver == PYMYSQL
            and "read_timeout" in added
            and connect_timeout is not None
            and connect_timeout < added["read_timeout"]
        ):
            # A server that accepts and never greets would hold the connect
            # for io_timeout: bound the greeting by connect_timeout instead.
            read_timeout = added["read_timeout"]
            added["read_timeout"] = connect_timeout
        return ConnectFactory(
            connect,
            args,
            {**kwargs, **added},
            driver=driver,
            added=frozenset(added),
            read_timeout=read_timeout,
        )


_default = DBAPIAdapter()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_watchdog._fresh)


# ------------------------------------------------------------------ the module interface


def reset_for(conn: Any) -> ResetPlan:
    """The reset plan for connections like ``conn`` (see the module docstring)."""
    return _default.reset_for(conn)


def check(conn: Any, timeout: float | None = None) -> None:
    """Raises if ``conn`` is unusable; leaves it as it was (see the module
    docstring for what ``timeout`` bounds)."""
    _default.check(conn, timeout)


def is_broken(conn: Any, exc: BaseException | None = None) -> bool:
    """True if ``conn`` must be discarded, False if only a query failed."""
    return _default.is_broken(conn, exc)


def watch(conn: Any, timeout: float) -> Callable[[], bool] | None:
    """Bounds what is done with ``conn`` to ``timeout`` seconds where the
    driver allows (see :meth:`DBAPIAdapter.watch`)."""
    return _default.watch(conn, timeout)


def close(conn: Any) -> None:
    """Closes ``conn``, logging (never raising) an error."""
    _default.close(conn)


def connect_factory(
    connect: Callable[..., Any],
    *args: Any,
    connect_timeout: float | None = 10.0,
    io_timeout: float | None = 30.0,
    **kwargs: Any,
) -> ConnectFactory:
    """A zero-argument factory for ``Pool(factory, ...)`` calling
    ``connect(*args, **kwargs)`` with the driver's time bounds added."""
    return _default.connect_factory(
        connect, *args, connect_timeout=connect_timeout, io_timeout=io_timeout, **kwargs
    )
