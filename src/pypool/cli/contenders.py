"""The contenders of ``pypool bench``: what each measures and how it is set
up (:class:`Contender`, :class:`Handles`), and the registry
(:data:`CONTENDERS`, :func:`register`) that :mod:`pypool.cli.peers` adds the
full pools and the peer pools to."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONNECTIONS",
    "CONTENDERS",
    "Contender",
    "FakeConnection",
    "Handles",
    "core_check",
    "register",
]

#: Connections in every pool measured (the floor's list holds one).
CONNECTIONS = 4


class FakeConnection:
    """Stands in for a database connection: a plain object."""


def _nothing() -> None:
    return None


def _drop(_state: Any) -> None:
    """A teardown with nothing to tear down."""


@dataclass(frozen=True)
class Handles:
    """What a contender's setup returns: the calls a benchmark makes.

    ``try_acquire()`` is the uncontended cycle's checkout: it must return a
    connection at once while one is idle (a pool without a non-blocking
    checkout gives its ordinary one). ``acquire(timeout)`` waits; None means
    the contender cannot wait, and then it takes no part in threaded runs.
    ``close()`` runs when the benchmark is done with it.
    """

    try_acquire: Callable[[], Any]
    release: Callable[[Any], object]
    acquire: Callable[[float], Any] | None = None
    close: Callable[[], object] = _nothing


def _usable() -> str | None:
    return None


@dataclass(frozen=True)
class Contender:
    """A thing to measure.

    ``setup(connections)`` builds it, holding that many connections, and
    returns its :class:`Handles`. ``check()`` returns None when the contender
    can run here, or a short reason why not (a missing extension or package).
    """

    name: str
    description: str
    setup: Callable[[int], Handles]
    check: Callable[[], str | None] = _usable


def _floor_setup(connections: int) -> Handles:
    lst = [FakeConnection()]
    return Handles(lst.pop, lst.append)


def core_check(module: str) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return f"{module} cannot be imported ({exc})"
        return None

    return check


def _core_setup(module: str) -> Callable[[int], Handles]:
    def setup(connections: int) -> Handles:
        pool = importlib.import_module(module).CorePool(connections)
        for _ in range(connections):
            pool.fill(pool.reserve(), FakeConnection())
        return Handles(pool.try_acquire, pool.release, pool.acquire, pool.close)

    return setup


def _queue_setup(connections: int) -> Handles:
    q: queue.Queue[FakeConnection] = queue.Queue(connections)
    for _ in range(connections):
        q.put(FakeConnection())
    return Handles(q.get_nowait, q.put, functools.partial(q.get, True))


#: The registry, in table order. The floor, when present, comes first.
CONTENDERS: list[Contender] = [
    Contender("floor", "lst.append(lst.pop()) on a one-element list", _floor_setup),
    Contender(
        "native",
        "pypool._corepool.CorePool (compiled core)",
        _core_setup("pypool._corepool"),
        core_check("pypool._corepool"),
    ),
    Contender(
        "python",
        "pypool._corepool_py.CorePool (pure-Python core)",
        _core_setup("pypool._corepool_py"),
        core_check("pypool._corepool_py"),
    ),
    Contender("queue", "queue.Queue: get() / put()", _queue_setup),
]


def register(contender: Contender) -> None:
    """Adds a contender (or replaces the one of the same name)."""
    for i, known in enumerate(CONTENDERS):
        if known.name == contender.name:
            CONTENDERS[i] = contender
            return
    CONTENDERS.append(contender)
