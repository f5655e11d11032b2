"""psycopg 3 pools with psycopg_pool's interface, on pypool's core.

Switching is a change of import::

    # from psycopg_pool import ConnectionPool, PoolTimeout
    from pypool.psycopg import ConnectionPool, PoolTimeout

    with ConnectionPool("postgresql://app@db/app", min_size=4) as pool:
        with pool.connection() as conn:          # commit on success, rollback on error
            conn.execute("INSERT INTO t VALUES (1)")

``ConnectionPool`` and ``NullConnectionPool`` take psycopg_pool 3.3's
constructor arguments and offer its methods (``open``, ``close``, ``wait``,
``connection``, ``getconn``, ``putconn``, ``resize``, ``check``,
``check_connection``, ``drain``, ``get_stats``, ``pop_stats``) and properties;
``PoolTimeout``, ``PoolClosed`` and ``TooManyRequests`` subclass both pypool's
errors and ``psycopg.OperationalError``, as psycopg_pool's do, so existing
``except`` clauses keep working. They log under ``psycopg.pool``. Where they
deliberately differ from psycopg_pool, ``docs/psycopg-migration.md`` says so
(lifetime is also enforced at hand-out; without a ``check`` callback, a
connection idle longer than ``check_after`` is checked before hand-out).
Connections are handed out round-robin, as psycopg_pool does; ``lifo=True``
reuses the most recently returned one first, as :class:`pypool.Pool` does.

A ``check`` callback is the user's contract, as in psycopg_pool: it runs on
every hand-out, a new connection's included (unless ``check_after`` is given
too), and a connection that fails it is discarded and counted in
``connections_lost``. It keeps the caller's timeout: at the caller's
deadline the connection's socket is shut down (an async check is
cancelled), so the check fails there and the caller gets ``PoolTimeout``.

Every connect gets the time bounds of :func:`pypool.dbapi.connect_factory`
that neither the conninfo nor ``kwargs`` sets (``connect_timeout``, TCP
keepalives, ``tcp_user_timeout``), so that a connect the network accepts and
never answers ends. In a child made by ``os.fork()`` every pool starts
afresh, with connections of its own.

State hygiene: a reset leaves no transaction, but session state (settings,
``SET ROLE``, temporary tables, prepared statements, ``LISTEN``, advisory
locks) survives it unless a reset policy clears it: pass ``reset=discard_all``
(everything, one round trip) or ``reset=reset_session`` (the same without
dropping temporary tables' and sequences' caches) to the pool.

Behind PgBouncer in transaction mode, pass ``transaction_pooling=True`` (a
pypool setting; psycopg_pool has none): the reset is then a rollback only (a
session-state reset is refused with ``ConfigurationError``), and connections
are made with ``prepare_threshold=None`` unless ``kwargs`` sets it, since
PgBouncer 1.18 cannot follow prepared statements (``docs/scaling-out.md``).
"""

from __future__ import annotations

from .base import AsyncPsycopgAdapter, PsycopgAdapter  # noqa: F401  (importable, as before)
from .errors import PoolClosed, PoolTimeout, TooManyRequests
from .null_pool import NullConnectionPool
from .null_pool_async import AsyncNullConnectionPool
from .pool import ConnectionPool
from .pool_async import AsyncConnectionPool
from .reset import discard_all, reset_session

__all__ = [
    "AsyncConnectionPool",
    "AsyncNullConnectionPool",
    "ConnectionPool",
    "NullConnectionPool",
    "PoolClosed",
    "PoolTimeout",
    "PsycopgAdapter",
    "TooManyRequests",
    "discard_all",
    "reset_session",
]
