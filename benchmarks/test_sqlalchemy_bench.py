"""pypool.sqlalchemy.QueuePool against SQLAlchemy's QueuePool.

Three groups, run with ``pytest benchmarks/test_sqlalchemy_bench.py
--benchmark-group-by=group``:

``sa-storage``
    The pool's own part of a checkout and a checkin: ``_do_get()`` +
    ``_do_return_conn()`` on a pool holding one idle connection.
``sa-pool-cycle``
    ``pool.connect()`` + ``close()``: adds SQLAlchemy's connection fairy,
    the reset on return (a rollback) and the event dispatch.
``sa-engine-cycle``
    ``engine.connect()`` + ``close()`` (no query), on an sqlite engine.

The pool-only groups use a fake DBAPI connection, so no driver time is
measured. The difference between ``sa-storage`` and ``sa-pool-cycle`` is the
time SQLAlchemy spends around the pool.
"""

from __future__ import annotations

import importlib
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")
from sqlalchemy import pool as sa_pool  # noqa: E402

try:
    import pypool  # noqa: F401
except ImportError:  # run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from pypool import sqlalchemy as pp  # noqa: E402

CONTENDERS = ["sqlalchemy", "native", "python"]


class FakeDBAPIConnection:
    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


def _poolclass(name: str) -> type:
    if name == "sqlalchemy":
        return sa_pool.QueuePool
    module = "pypool._corepool" if name == "native" else "pypool._corepool_py"
    try:
        core = importlib.import_module(module)
    except ImportError as exc:
        pytest.skip(f"{module} cannot be imported: {exc}")
    return pp.QueuePool.with_core(core)


@pytest.fixture(params=CONTENDERS)
def pool(request: pytest.FixtureRequest) -> Any:
    cls = _poolclass(request.param)
    p = cls(FakeDBAPIConnection, pool_size=5, max_overflow=10)
    p.connect().close()  # one idle connection
    yield p
    p.dispose()


@pytest.fixture(params=CONTENDERS)
def engine(request: pytest.FixtureRequest) -> Any:
    cls = _poolclass(request.param)

    def creator() -> sqlite3.Connection:
        return sqlite3.connect(":memory:", check_same_thread=False)

    e = sa.create_engine("sqlite://", creator=creator, poolclass=cls, pool_size=5, max_overflow=10)
    e.connect().close()
    yield e
    e.dispose()


@pytest.mark.benchmark(group="sa-storage")
def test_storage(benchmark: Any, pool: Any) -> None:
    do_get = pool._do_get
    do_return = pool._do_return_conn

    def cycle() -> None:
        for _ in range(100):
            do_return(do_get())

    benchmark(cycle)  # per 100 cycles
    assert pool.checkedin() == 1


@pytest.mark.benchmark(group="sa-pool-cycle")
def test_pool_connect_close(benchmark: Any, pool: Any) -> None:
    connect = pool.connect

    def cycle() -> None:
        for _ in range(100):
            connect().close()

    benchmark(cycle)  # per 100 cycles
    assert pool.checkedout() == 0


@pytest.mark.benchmark(group="sa-engine-cycle")
def test_engine_connect_close(benchmark: Any, engine: Any) -> None:
    connect = engine.connect

    def cycle() -> None:
        for _ in range(100):
            connect().close()

    benchmark(cycle)  # per 100 cycles
    assert engine.pool.checkedout() == 0
