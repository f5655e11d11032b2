"""Where the test databases are, for tests that need more than the ``dsn``
fixture of ``conftest.py``, and :func:`pools_on`, which makes the pools over
them and closes them.

MariaDB (or MySQL) comes from ``PYPOOL_TEST_MYSQL``, a
``mysql://user:password@host:port/db`` URL (default: root, no password, on
127.0.0.1:3306, database ``test``).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from pypool import Pool

__all__ = ["DEFAULT_MYSQL", "mysql_params", "pools_on"]

DEFAULT_MYSQL = "mysql://root@127.0.0.1:3306/test"


def mysql_params() -> dict[str, Any]:
    """``pymysql.connect`` arguments for the test database. Skips the test
    when PyMySQL is missing or the server is unusable, unless
    ``PYPOOL_REQUIRE_DB=1``: then an unusable server is a failure."""
    pymysql = pytest.importorskip("pymysql")
    parts = urlsplit(os.environ.get("PYPOOL_TEST_MYSQL", DEFAULT_MYSQL))
    params: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
        "database": parts.path.lstrip("/") or "test",
    }
    shown = f"{params['host']}:{params['port']}/{params['database']}"  # no credentials
    problem = None
    try:
        with socket.create_connection((params["host"], params["port"]), timeout=3):
            pass
        pymysql.connect(**params, connect_timeout=3).close()
    except Exception as exc:  # any error means "not usable"
        # The code only: a driver's message may repeat the password.
        problem = f"{type(exc).__name__} {exc.args[0] if exc.args else ''}".strip()
    if problem is not None:
        if os.environ.get("PYPOOL_REQUIRE_DB") == "1":
            pytest.fail(f"PYPOOL_REQUIRE_DB=1 but the database {shown} is unusable: {problem}")
        pytest.skip(f"database {shown} unusable: {problem}")
    return params


@contextlib.contextmanager
def pools_on(core: ModuleType) -> Iterator[Callable[..., Any]]:
    """``with pools_on(core) as make:`` ``make(factory, **kw)`` is a
    ``pypool.Pool`` on ``core`` over ``factory`` (a real driver's), with a
    10 s timeout unless ``kw`` says otherwise; every pool made is closed
    (within 5 s) when the block ends."""
    made: list[Any] = []

    def make(factory: Callable[[], Any], **kw: Any) -> Any:
        kw.setdefault("timeout", 10.0)
        pool = Pool.with_core(core)(factory, **kw)
        made.append(pool)
        return pool

    try:
        yield make
    finally:
        for pool in made:
            pool.close(timeout=5.0)
