"""Fixtures for the core microbenchmarks.

Run them with::

    pytest benchmarks --benchmark-group-by=group

The ``contender`` fixture is parametrized indirectly by name (``floor``,
``native``, ``python``, ``queue``). Each pool holds ``CONNECTIONS`` plain
objects as its connections. Both cores are imported directly, so one run
compares them whichever one ``pypool.CORE`` names; the native one is skipped
when it is not built.
"""

from __future__ import annotations

import functools
import importlib
import queue
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

try:
    import pypool  # noqa: F401
except ImportError:  # not installed: run from a checkout (a native build lands in src/pypool)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

#: Connections in every pool (the floor's list holds one).
CONNECTIONS = 4

CORE_MODULES = {"native": "pypool._corepool", "python": "pypool._corepool_py"}


class FakeConnection:
    """Stands in for a database connection."""


def _nothing() -> None:
    return None


@dataclass
class Contender:
    """Bound methods, looked up once so the timed loops only call them.

    ``try_acquire()`` never blocks; ``acquire()`` is the blocking call without
    a timeout; ``acquire_timeout(seconds)`` the blocking call with one (None
    for the floor, which cannot wait).
    """

    name: str
    connections: int
    try_acquire: Callable[[], Any]
    release: Callable[[Any], object]
    acquire: Callable[[], Any]
    acquire_timeout: Callable[[float], Any] | None
    close: Callable[[], object] = _nothing


def _core(name: str) -> Contender:
    try:
        module = importlib.import_module(CORE_MODULES[name])
    except ImportError as exc:
        pytest.skip(f"{CORE_MODULES[name]} is not built ({exc})")
    pool = module.CorePool(CONNECTIONS)
    for _ in range(CONNECTIONS):
        pool.fill(pool.reserve(), FakeConnection())
    return Contender(
        name, CONNECTIONS, pool.try_acquire, pool.release, pool.acquire, pool.acquire, pool.close
    )


def _queue() -> Contender:
    q: queue.Queue[FakeConnection] = queue.Queue(CONNECTIONS)
    for _ in range(CONNECTIONS):
        q.put(FakeConnection())
    return Contender(
        "queue", CONNECTIONS, q.get_nowait, q.put, q.get, functools.partial(q.get, True)
    )


def _floor() -> Contender:
    # The least a cycle of two calls can cost: lst.append(lst.pop()).
    lst = [FakeConnection()]
    return Contender("floor", 1, lst.pop, lst.append, lst.pop, None)


_MAKERS: dict[str, Callable[[], Contender]] = {
    "floor": _floor,
    "native": functools.partial(_core, "native"),
    "python": functools.partial(_core, "python"),
    "queue": _queue,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The native contender needs the compiled core: give it the project's marker.
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("contender") == "native":
            item.add_marker(pytest.mark.native)


@pytest.fixture
def contender(request: pytest.FixtureRequest) -> Iterator[Contender]:
    """The contender named by indirect parametrization; closed afterwards."""
    made = _MAKERS[request.param]()
    yield made
    made.close()
