"""asyncpg knowledge for :class:`pypool.AsyncPool`: ``adapter=pypool.asyncpg``.

::

    import asyncpg
    import pypool

    pool = pypool.AsyncPool(
        lambda: asyncpg.connect("postgresql://app@db/app"), adapter=pypool.asyncpg
    )
    async with pool.connection() as conn:
        await conn.fetchval("SELECT 1")

- **reset** on return: asyncpg's own ``Connection.reset()``, the reset its
  ``create_pool`` runs (an open transaction rolled back, cursors closed,
  ``LISTEN`` registrations and listeners removed, settings reset, advisory
  locks released: one round trip). ``reset=False`` on the pool skips it.
  With ``transaction_pooling=True`` on the pool (behind PgBouncer in
  transaction mode) the reset is :func:`transaction_pooling_reset` instead:
  a rollback of an open transaction, nothing more; pass
  ``statement_cache_size=0`` to ``asyncpg.connect`` there too, since
  PgBouncer 1.18 cannot follow prepared statements.
- **check** before hand-out (only after ``check_after`` idle, bounded by what
  is left of the caller's timeout): ``SELECT 1``.
- **broken**: ``conn.is_closed()``.
- **close**: ``conn.close(timeout=...)``, then ``terminate()`` if the server
  does not answer.

Compared with ``asyncpg.create_pool``: that pool waits forever for a
connection by default (``acquire(timeout=None)``), has no lifetime limit
(``max_inactive_connection_lifetime`` closes idle ones only), connects inline
in the acquiring task, and has no wait-queue bound; pypool's waits are
bounded (``timeout=30``), connections are replaced after ``max_lifetime``,
connects run in worker tasks, and ``max_waiting`` sheds load.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check", "close", "is_broken", "reset_for", "transaction_pooling_reset"]

#: Seconds a close may take before the connection is terminated.
CLOSE_TIMEOUT = 5.0


def reset_for(conn: Any) -> Any:
    """The reset for asyncpg connections: ``Connection.reset()``, by name
    (the core calls it and the pool awaits what it returns)."""
    return "reset"


async def transaction_pooling_reset(conn: Any) -> None:
    """The reset behind a pooler in transaction mode: rolls back an open
    transaction and leaves session state alone (it is not the client's)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def check(conn: Any) -> None:
    """Raises if the connection does not answer ``SELECT 1``."""
    await conn.fetchval("SELECT 1")


def is_broken(conn: Any, exc: BaseException | None = None) -> bool:
    """True once asyncpg has closed the connection."""
    return bool(conn.is_closed())


async def close(conn: Any) -> None:
    """Closes politely, or terminates a connection that does not answer."""
    if conn.is_closed():
        return
    try:
        await conn.close(timeout=CLOSE_TIMEOUT)
    except Exception:
        conn.terminate()
