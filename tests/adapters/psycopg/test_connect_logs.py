"""What pypool's pools log about connects: one record when an outage starts,
then a few at a pace that slows as the retries do (not one per failed
connect), and DEBUG records for every connection made and closed (the
README's promise). For ``Pool`` and ``AsyncPool``, on both cores; the psycopg
pools' records are compared with psycopg_pool's in ``test_psycopg_matrix``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import ModuleType
from typing import Any

import pytest

from pypool import AsyncPool, Pool, PoolTimeout
from pypool import stats as names


class Conn:
    closed = False

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class Down(Exception):
    pass


def refused() -> Any:
    raise Down("connection refused")


async def refused_async() -> Any:
    raise Down("connection refused")


def _failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "pypool" and "connection failed" in r.getMessage()
    ]


def test_an_outage_is_logged_once_then_at_a_slowing_pace(
    core_module: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    pool = Pool.with_core(core_module)(refused, min_size=1, num_workers=3)
    try:
        with caplog.at_level(logging.WARNING, logger="pypool"):
            started = time.monotonic()
            with pytest.raises(PoolTimeout):
                pool.wait(0.8)
            elapsed = time.monotonic() - started
            failed = pool.stats()[names.CONNECT_ERRORS]
            logged = _failures(caplog)
        assert failed >= 5, "the pool retried (with backoff) meanwhile"
        # One when the outage started; the next one not before a second.
        assert len(logged) == 1 if elapsed < 1.0 else len(logged) <= 2, [
            r.getMessage() for r in logged
        ]
        assert all(r.levelno == logging.WARNING for r in logged)
        with caplog.at_level(logging.WARNING, logger="pypool"):
            caplog.clear()
            time.sleep(3.0)
            later = _failures(caplog)
        # Then with a count of the outage's failed connects, about every
        # 1, 2, 4, 5 s: in 3 s at most 2 more, and at least 1.
        assert 1 <= len(later) <= 2, [r.getMessage() for r in later]
        assert all("reconnection attempt" in r.getMessage() for r in later)
    finally:
        pool.close()


def test_an_async_outage_is_logged_once(
    core_module: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        pool = AsyncPool.with_core(core_module)(refused_async, min_size=1, num_workers=3)
        try:
            with pytest.raises(PoolTimeout):
                await pool.wait(0.8)
            assert pool.stats()[names.CONNECT_ERRORS] >= 5
        finally:
            await pool.close()

    with caplog.at_level(logging.WARNING, logger="pypool"):
        asyncio.run(scenario())
    assert len(_failures(caplog)) == 1, [r.getMessage() for r in _failures(caplog)]


def test_a_new_outage_is_logged_again(
    core_module: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    up = {"now": False}

    def factory() -> Any:
        if not up["now"]:
            raise Down("connection refused")
        return Conn()

    pool = Pool.with_core(core_module)(factory, min_size=1)
    try:
        with caplog.at_level(logging.WARNING, logger="pypool"):
            with pytest.raises(PoolTimeout):
                pool.wait(0.3)
            up["now"] = True
            pool.wait(5.0)  # the outage ends
            conn = pool.acquire(5.0)
            up["now"] = False
            pool.discard(conn)  # a new connect is needed (min_size), and fails: a new outage
            deadline = time.monotonic() + 5.0
            while len(_failures(caplog)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        messages = [r.getMessage() for r in _failures(caplog)]
        assert len(messages) == 2, messages
        assert all("reconnection attempt" not in m for m in messages), messages
    finally:
        pool.close()


def test_connections_made_and_closed_are_logged_at_debug(
    core_module: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="pypool"):
        pool = Pool.with_core(core_module)(Conn, min_size=1)
        pool.wait(5.0)
        pool.close()
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("connection made" in m for m in debug), debug
    assert any("connection closed (closed)" in m for m in debug), debug
