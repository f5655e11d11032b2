"""What the psycopg reset tests share, sync and async: the session state
each reset policy must clear, the query psycopg prepares by itself, and a
role without login to switch to."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pypool.psycopg import discard_all, reset_session

__all__ = (
    "AUTO_QUERY",
    "POLICIES",
    "PREPARE_THRESHOLD",
    "SURVIVES_DEFAULT_RESET",
    "lock_key",
    "nologin_role",
)

#: What the default reset (a rollback of an open or aborted transaction, and
#: nothing else) lets through to the next borrower, once the previous one
#: committed it. All of it is session state, outside any transaction.
SURVIVES_DEFAULT_RESET = (
    "SET ROLE",
    "SET SESSION AUTHORIZATION",
    "SET search_path",
    "SET statement_timeout",
    "temporary table",
    "session advisory lock",
    "LISTEN",
    "PREPARE",
    "psycopg's automatically prepared statements",
)

POLICIES = [
    pytest.param(discard_all, id="discard_all"),
    pytest.param(reset_session, id="reset_session"),
]


def lock_key() -> int:
    return uuid.uuid4().int % 2**62


#: psycopg prepares a query after this many executions (its default).
PREPARE_THRESHOLD = 5
AUTO_QUERY = "SELECT %s::int + 1"


def _as_admin(dsn: str, sql: str) -> Any:
    """Runs ``sql`` on a connection of its own, in autocommit; its first row
    (None for a statement without rows)."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        cur = admin.execute(sql)
        return cur.fetchone() if cur.description else None


@contextlib.contextmanager
def nologin_role(dsn: str, prefix: str) -> Iterator[str]:
    """A fresh role without login (for ``SET ROLE`` / ``SET SESSION
    AUTHORIZATION``), dropped afterwards; skips the test when the test user
    is not a superuser."""
    if _as_admin(dsn, "SELECT current_setting('is_superuser')") != ("on",):
        pytest.skip("the test user is not a superuser: cannot switch roles")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _as_admin(dsn, f"CREATE ROLE {name} NOLOGIN")
    try:
        yield name
    finally:
        _as_admin(dsn, f"DROP ROLE IF EXISTS {name}")
