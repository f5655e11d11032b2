"""Fixtures shared by the test suite.

Every core test runs on both cores through the session fixture ``core_module``
(ids ``native`` and ``python``). The native parameter carries the ``native``
marker, so ``-m "not native"`` deselects it cleanly on a pure-Python install;
it is skipped, with the import error as the reason, when ``pypool._corepool``
cannot be imported, unless ``PYPOOL_EXPECT_CORE=native`` says it must load:
then a missing native core is a failure.
"""

from __future__ import annotations

import importlib
import os
import socket
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest

#: Fixtures of the shared test support: ``fault_proxy`` (a TCP proxy to cut),
#: ``make_core_pool``, ``make_pool`` and ``conn_type`` (fake connections).
pytest_plugins = ["_support.faultproxy", "_support.fakes"]

NATIVE_MODULE = "pypool._corepool"
PYTHON_MODULE = "pypool._corepool_py"

#: Keys of ``CorePool.stats()``; the ones measured in seconds vary run to run.
STATS_KEYS = frozenset(
    {
        "acquires",
        "waits",
        "wait_time",
        "wait_time_max",
        "timeouts",
        "abandoned",
        "use_time",
        "size",
        "idle",
        "in_use",
        "connecting",
        "claimed",
        "waiting",
        "max_size",
        "max_waiting",
    }
)
TIME_KEYS = frozenset({"wait_time", "wait_time_max", "use_time"})


def expect_native() -> bool:
    """True when the environment says the native core must be the one in use."""
    return os.environ.get("PYPOOL_EXPECT_CORE") == "native"


def import_native_core() -> ModuleType:
    """The native core; skips (or fails, if it is expected) when it cannot load."""
    try:
        return importlib.import_module(NATIVE_MODULE)
    except ImportError as exc:
        reason = f"the native core {NATIVE_MODULE} cannot be imported: {exc}"
        if expect_native():
            pytest.fail(f"PYPOOL_EXPECT_CORE=native, but {reason}", pytrace=False)
        pytest.skip(reason)


def native_core_importable() -> bool:
    try:
        importlib.import_module(NATIVE_MODULE)
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------ the cores


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("native", marks=pytest.mark.native, id="native"),
        pytest.param("python", id="python"),
    ],
)
def core_module(request: pytest.FixtureRequest) -> ModuleType:
    """The core under test: ``pypool._corepool`` or ``pypool._corepool_py``."""
    if request.param == "native":
        return import_native_core()
    return importlib.import_module(PYTHON_MODULE)


@pytest.fixture(scope="session")
def native_module() -> ModuleType:
    """The native core, for tests that compare it with the Python one."""
    return import_native_core()


@pytest.fixture(scope="session")
def python_module() -> ModuleType:
    return importlib.import_module(PYTHON_MODULE)


@pytest.fixture(scope="session")
def CorePool(core_module: ModuleType) -> type:
    return core_module.CorePool


# ------------------------------------------------------------------ helpers


def snapshot(pool: Any) -> tuple[Any, ...]:
    """What must not change when an operation is refused: counters, gauges
    and the state of every slot."""
    stats = {k: v for k, v in pool.stats().items() if k not in TIME_KEYS}
    slots = tuple(pool.slot_info(i)[0] for i in pool.slots())
    return (stats, slots, pool.closed, pool.generation)


# ------------------------------------------------------------------ database

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _db_unreachable(dsn: str) -> str | None:
    """None if the server answers, else why not."""
    try:
        import psycopg
    except ImportError:
        parts = urlsplit(dsn)
        host, port = parts.hostname or "127.0.0.1", parts.port or 5432
        try:
            with socket.create_connection((host, port), timeout=3):
                return None
        except OSError as exc:
            return f"cannot reach {host}:{port}: {exc}"
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return None
    except Exception as exc:  # any driver error means "not usable"
        return f"cannot connect with psycopg: {exc}"


@pytest.fixture(scope="session")
def dsn() -> str:
    """The database of the ``db`` tests (``PYPOOL_TEST_DSN``).

    Skipped with the reason when the server cannot be reached, unless
    ``PYPOOL_REQUIRE_DB=1``: then that is a failure.
    """
    value = os.environ.get("PYPOOL_TEST_DSN", DEFAULT_DSN)
    problem = _db_unreachable(value)
    if problem is not None:
        parts = urlsplit(value)
        shown = f"{parts.hostname}:{parts.port or 5432}{parts.path}"  # no credentials
        if os.environ.get("PYPOOL_REQUIRE_DB") == "1":
            pytest.fail(f"PYPOOL_REQUIRE_DB=1 but the database {shown} is unusable: {problem}")
        pytest.skip(f"database {shown} unusable: {problem}")
    return value


# ------------------------------------------------------------ subprocesses


def child_env(**overrides: str | None) -> dict[str, str]:
    """An environment for a child interpreter that imports the same pypool
    as this process, with no core-selection variables unless given."""
    import pypool

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYPOOL_")}
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(pypool.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env
