"""Session-state resets for the psycopg pools: :func:`discard_all` and
:func:`reset_session` (pass one as ``reset=``)."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from ..pool.settings import session_state_reset

_OPEN = (TransactionStatus.INTRANS, TransactionStatus.INERROR)

__all__ = ["discard_all", "reset_session"]


def _in_transaction(conn: Any) -> bool:
    """True if ``conn`` has a transaction open or failed (not ACTIVE: a
    connection returned mid-command is left to fail, and be discarded)."""
    return conn.pgconn.transaction_status in _OPEN


def _in_autocommit(conn: Any, sql: str, prepare: bool | None = None) -> None:
    """Runs ``sql`` outside any transaction (switching autocommit is local),
    through psycopg's own ``execute``; a transaction left open is rolled
    back first (as the psycopg pools do before any reset), so that the reset
    also works as ``reset=`` of a plain :class:`pypool.Pool`."""
    if _in_transaction(conn):
        conn.rollback()
    if conn.autocommit:
        conn.execute(sql, prepare=prepare)
        return
    conn.autocommit = True
    try:
        conn.execute(sql, prepare=prepare)
    finally:
        with suppress(Exception):
            conn.autocommit = False


def _forget_prepared(conn: Any) -> None:
    """Makes psycopg forget the statements it prepared on ``conn``, which a
    ``DISCARD ALL`` has just deallocated on the server.

    psycopg notices a ``DISCARD ALL`` only the first time it runs a query
    text; afterwards its cache would name statements the server no longer
    has. Its cache is private: cleared here field by field (no ``DEALLOCATE
    ALL`` queued, the server has none left), or through its own ``clear()``.
    """
    prepared = getattr(conn, "_prepared", None)
    if prepared is None:
        return
    try:
        prepared._counts.clear()
        prepared._names.clear()
        prepared._to_flush.clear()
    except AttributeError:  # another psycopg layout: its own way
        prepared.clear()


async def _in_autocommit_async(conn: Any, sql: str, prepare: bool | None = None) -> None:
    if _in_transaction(conn):
        await conn.rollback()
    if conn.autocommit:
        await conn.execute(sql, prepare=prepare)
        return
    await conn.set_autocommit(True)
    try:
        await conn.execute(sql, prepare=prepare)
    finally:
        with suppress(Exception):
            await conn.set_autocommit(False)


async def _discard_all_async(conn: Any) -> None:
    await _in_autocommit_async(conn, "DISCARD ALL", prepare=False)
    _forget_prepared(conn)


@session_state_reset
def discard_all(conn: Any) -> Any:
    """A reset that clears every trace of the previous borrower:
    ``DISCARD ALL`` (one round trip). For an ``AsyncConnection`` it returns a
    coroutine (the async pools await it).

    It runs ``SET SESSION AUTHORIZATION DEFAULT`` and ``RESET ALL`` (roles and
    every setting), ``DEALLOCATE ALL`` (prepared statements: psycopg forgets
    its own too and prepares again when needed), ``CLOSE ALL`` (cursors),
    ``UNLISTEN *``, ``SELECT pg_advisory_unlock_all()``, ``DISCARD PLANS``,
    ``DISCARD SEQUENCES`` and ``DISCARD TEMP`` (temporary tables). A
    transaction left open is rolled back first, so that it also serves as
    ``reset=`` of a plain :class:`pypool.Pool` whose connections are not in
    autocommit (the psycopg pools roll back before any reset). Behind
    PgBouncer in transaction mode a session is not yours across
    transactions, so there session state must not be relied on at all, and
    ``DISCARD ALL`` there only resets the server connection it lands on: a
    pool with ``transaction_pooling=True`` refuses this reset.
    """
    if isinstance(conn, psycopg.AsyncConnection):
        return _discard_all_async(conn)  # the async pools await it
    _in_autocommit(conn, "DISCARD ALL", prepare=False)
    _forget_prepared(conn)
    return None


_RESET_SESSION = (
    "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; CLOSE ALL; "
    "UNLISTEN *; SELECT pg_advisory_unlock_all()"
)


@session_state_reset
def reset_session(conn: Any) -> Any:
    """A narrower reset than :func:`discard_all`, in one round trip: roles,
    settings, prepared statements, cursors, ``LISTEN`` registrations and
    session advisory locks; temporary tables are kept (and cached plans of
    statements not prepared explicitly). For an ``AsyncConnection`` it
    returns a coroutine (the async pools await it)."""
    if isinstance(conn, psycopg.AsyncConnection):
        return _in_autocommit_async(conn, _RESET_SESSION)
    _in_autocommit(conn, _RESET_SESSION)
    return None
