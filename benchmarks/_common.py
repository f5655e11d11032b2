"""What more than one benchmark needs: the database they measure on, the
psycopg pools they compare, the threaded round of checkout cycles, and how
results are recorded in ``extra_info``.

Imported as ``_common`` by the benchmark modules and by the scripts in this
folder (``python benchmarks/<script>.py`` puts the folder on ``sys.path``, as
pytest does for the benchmark modules).
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable
from itertools import repeat
from typing import Any
from urllib.parse import urlsplit

import pytest

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
#: pypool's contenders in the psycopg benchmarks, and the core each runs on.
CORES = {"pypool-native": "pypool._corepool", "pypool-python": "pypool._corepool_py"}
#: The timeout passed to a waiting checkout; never reached in a sane run.
TIMEOUT = 30.0


# ------------------------------------------------------------------ database


def shown(dsn: str) -> str:
    """Where a DSN points, without credentials."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        return f"{parts.hostname}:{parts.port or 5432}{parts.path}"
    from pypool.dbapi import mask_dsn

    return mask_dsn(dsn)


_problems: dict[tuple[str, bool], str | None] = {}


def _problem(dsn: str, with_psycopg_pool: bool) -> str | None:
    """Why ``dsn`` cannot be measured on (None: it can); asked once."""
    key = (dsn, with_psycopg_pool)
    if key not in _problems:
        problem: str | None = None
        try:
            import psycopg

            if with_psycopg_pool:
                import psycopg_pool  # noqa: F401

            with psycopg.connect(dsn, connect_timeout=3):
                pass
        except ImportError as exc:
            if with_psycopg_pool:
                problem = f"{exc.name} is not installed (pip install 'psycopg[binary,pool]')"
            else:
                problem = "psycopg is not installed (pip install psycopg[binary])"
        except Exception as exc:  # any driver error means "not usable"
            from pypool.dbapi import mask_dsn

            problem = mask_dsn(f"cannot connect: {type(exc).__name__}: {exc}")
        _problems[key] = problem
    return _problems[key]


def database(*, with_psycopg_pool: bool = True) -> str:
    """The benchmarks' DSN: ``PYPOOL_BENCH_DSN``, else ``PYPOOL_TEST_DSN``,
    else :data:`DEFAULT_DSN`. Skips the test (fails it with
    ``PYPOOL_REQUIRE_DB=1``) when psycopg (and psycopg_pool, unless told)
    is missing or the server cannot be reached."""
    dsn = os.environ.get("PYPOOL_BENCH_DSN") or os.environ.get("PYPOOL_TEST_DSN") or DEFAULT_DSN
    problem = _problem(dsn, with_psycopg_pool)
    if problem is not None:
        message = f"database {shown(dsn)} unusable: {problem}"
        if os.environ.get("PYPOOL_REQUIRE_DB") == "1":
            pytest.fail(f"PYPOOL_REQUIRE_DB=1 but the {message}")
        pytest.skip(message)
    return dsn


# ------------------------------------------------------------------ psycopg pools


def psycopg_param(name: str) -> Any:
    """A contender of the psycopg benchmarks as a parameter (``pypool-native``
    marked ``native``)."""
    marks = [pytest.mark.native] if name == "pypool-native" else []
    return pytest.param(name, marks=marks, id=name)


#: The pools the psycopg benchmarks compare.
PSYCOPG_POOLS = [psycopg_param(n) for n in ("pypool-native", "pypool-python", "psycopg_pool")]


def psycopg_pool_class(name: str, *, asynchronous: bool = False) -> Any:
    """``ConnectionPool`` (``AsyncConnectionPool``) of psycopg_pool for the
    name ``psycopg_pool``, else pypool.psycopg's on the core ``CORES[name]``
    (ImportError when that core is not built)."""
    class_name = "AsyncConnectionPool" if asynchronous else "ConnectionPool"
    if name == "psycopg_pool":
        import psycopg_pool

        return getattr(psycopg_pool, class_name)
    from pypool import psycopg

    return getattr(psycopg, class_name).with_core(importlib.import_module(CORES[name]))


def skip_unless_built(name: str) -> None:
    """Skips the test when ``name`` is a pypool contender whose core is not built."""
    if name in CORES:
        try:
            importlib.import_module(CORES[name])
        except ImportError as exc:
            pytest.skip(f"{CORES[name]} is not built ({exc})")


def psycopg_pool_kwargs(size: int, *, autocommit: bool, open: bool) -> dict[str, Any]:
    """The arguments of a pool of ``size`` connections (``min_size=max_size``)."""
    return {
        "kwargs": {"autocommit": autocommit},
        "min_size": size,
        "max_size": size,
        "open": open,
    }


def open_psycopg_pool(name: str, dsn: str, size: int, *, autocommit: bool = True) -> Any:
    """A full psycopg pool of ``size`` connections (see :func:`psycopg_pool_class`)."""
    pool_class = psycopg_pool_class(name)
    pool = pool_class(dsn, **psycopg_pool_kwargs(size, autocommit=autocommit, open=True))
    pool.wait(TIMEOUT)
    return pool


# ------------------------------------------------------------------ threads


class Round:
    """One threaded round: ``threads`` threads started, waiting on the
    barrier, each to run ``release(acquire(timeout))`` ``per_thread`` times."""

    def __init__(
        self,
        acquire: Callable[[float], Any] | None,
        release: Callable[[Any], object],
        threads: int,
        per_thread: int,
        timeout: float = TIMEOUT,
    ) -> None:
        assert acquire is not None
        self.errors: list[BaseException] = []
        self.barrier = threading.Barrier(threads + 1)

        def work() -> None:
            try:
                self.barrier.wait()
                for _ in repeat(None, per_thread):
                    release(acquire(timeout))
            except BaseException as exc:
                self.errors.append(exc)

        self.workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
        for w in self.workers:
            w.start()

    def run(self) -> None:
        """The timed part: release the barrier, join every thread."""
        self.barrier.wait()
        for w in self.workers:
            w.join()

    def check(self) -> None:
        if self.errors:
            exc = self.errors[0]
            pytest.fail(f"a worker thread failed: {type(exc).__name__}: {exc}")


def calibrate(
    acquire: Callable[[float], Any] | None,
    release: Callable[[Any], object],
    threads: int,
    seconds: float,
) -> int:
    """Cycles per thread for a :class:`Round` of about ``seconds``."""
    per_thread = max(20, 2000 // threads)
    while True:
        r = Round(acquire, release, threads, per_thread)
        t0 = time.perf_counter()
        r.run()
        elapsed = time.perf_counter() - t0
        r.check()
        if elapsed >= seconds / 8:
            return max(10, round(per_thread * seconds / elapsed))
        per_thread *= 4


# ------------------------------------------------------------------ results


def record_per_cycle(benchmark: Any, cycles: int) -> None:
    """``extra_info``: ``ns_per_cycle`` at the median of timed calls of
    ``cycles`` cycles each, and ``cycles_per_call``."""
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["ns_per_cycle"] = benchmark.stats.stats.median / cycles * 1e9
        benchmark.extra_info["cycles_per_call"] = cycles


def record_rate(benchmark: Any, total: int, unit: str, **info: int) -> None:
    """``extra_info``: ``info``, then ``<unit>_per_round`` (``total``) and
    ``<unit>_per_s``, the throughput at the median round."""
    benchmark.extra_info.update(info)
    benchmark.extra_info[f"{unit}_per_round"] = total
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info[f"{unit}_per_s"] = total / benchmark.stats.stats.median
