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
from urllib.parse import urlsplit

import pytest

from _support.cores import PYTHON_MODULE, import_native_core

#: Fixtures of the shared test support: ``fault_proxy`` (a TCP proxy to cut),
#: ``make_core_pool``, ``make_pool`` and ``conn_type`` (fake connections).
pytest_plugins = ["_support.faultproxy", "_support.fakes"]

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
