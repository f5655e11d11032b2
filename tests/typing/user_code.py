"""A user's code, checked by mypy --strict in tests/test_typing.py: the types
a pool hands out are the types its factory makes. Never run, only checked."""

from __future__ import annotations

from typing import Any

import psycopg
from typing_extensions import assert_type

import pypool
import pypool.asyncpg
import pypool.dbapi
import pypool.psycopg
from pypool import Adapter, AsyncPool, Pool
from pypool.psycopg.base import AsyncPsycopgAdapter, PsycopgAdapter


class MyConn:
    def close(self) -> None: ...


def make() -> MyConn:
    return MyConn()


async def make_async() -> MyConn:
    return MyConn()


def count(conn: MyConn) -> int:
    return 1


async def count_async(conn: MyConn) -> str:
    return "1"


def threads() -> None:
    pool = Pool(make)
    assert_type(pool, Pool[MyConn])
    assert_type(pool.acquire(), MyConn)
    assert_type(pool.acquire(timeout=1.0), MyConn)
    with pool.connection() as conn:
        assert_type(conn, MyConn)
    pool.release(conn)
    assert_type(pool.run(count), int)
    assert_type(pool.run(lambda c: [c]), list[MyConn])
    with Pool(make, max_size=4) as same:
        assert_type(same, Pool[MyConn])
    python_core: Pool[MyConn] = Pool.with_core("python")(make)
    assert_type(python_core.acquire(), MyConn)


async def tasks() -> None:
    pool = AsyncPool(make_async)
    assert_type(pool, AsyncPool[MyConn])
    assert_type(AsyncPool(make), AsyncPool[MyConn])  # a plain function too
    assert_type(await pool.acquire(), MyConn)
    async with pool.connection() as conn:
        assert_type(conn, MyConn)
    await pool.release(conn)
    assert_type(await pool.run(count_async), str)
    async with AsyncPool(make_async) as same:
        assert_type(same, AsyncPool[MyConn])


def psycopg_pools() -> None:
    pool: pypool.psycopg.ConnectionPool[psycopg.Connection[Any]]
    pool = pypool.psycopg.ConnectionPool("dbname=test", open=False)
    with pool.connection() as conn:
        assert_type(conn, psycopg.Connection[Any])
    assert_type(pool.getconn(), psycopg.Connection[Any])
    pool.putconn(conn)
    assert_type(pool.run(lambda c: c.execute("SELECT 1")), psycopg.Cursor[Any])
    apool: pypool.psycopg.AsyncConnectionPool[psycopg.AsyncConnection[Any]]
    apool = pypool.psycopg.AsyncConnectionPool("dbname=test", open=False)
    assert apool is not None


async def psycopg_async_pool(
    apool: pypool.psycopg.AsyncConnectionPool[psycopg.AsyncConnection[Any]],
) -> None:
    async with apool.connection() as conn:
        assert_type(conn, psycopg.AsyncConnection[Any])
    assert_type(await apool.getconn(), psycopg.AsyncConnection[Any])
    await apool.putconn(conn)


def adapters() -> None:
    # The adapters implement the protocol structurally (no base class).
    modules: list[Adapter] = [pypool.dbapi, pypool.asyncpg]
    instances: list[Adapter] = [
        pypool.dbapi.DBAPIAdapter(),
        PsycopgAdapter(),
        AsyncPsycopgAdapter(),
    ]
    assert modules and instances
