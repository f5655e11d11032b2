"""Code mypy must refuse (tests/test_typing.py): each line below marked
``# error: <code>`` is an error of that code, and no other line is."""

from __future__ import annotations

from pypool import AsyncPool, Pool


class MyConn: ...


class Other: ...


def make() -> MyConn:
    return MyConn()


def takes_other(conn: Other) -> int:
    return 0


async def atakes_other(conn: Other) -> int:
    return 0


def threads() -> None:
    pool = Pool(make)
    other: Other = pool.acquire()  # error: assignment
    pool.release(Other())  # error: arg-type
    pool.run(takes_other)  # error: arg-type
    Pool(42)  # error: arg-type
    assert other


async def tasks() -> None:
    pool = AsyncPool(make)
    other: Other = await pool.acquire()  # error: assignment
    await pool.run(atakes_other)  # error: arg-type
    assert other
