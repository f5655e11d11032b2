"""Weak links to a pool, so that a pool nobody references is freed by
reference counting alone, without waiting for the garbage collector; and
its opposite for a fork child's copies of the parent's connections, which
must never be finalized (:func:`keep_forever`).

A pool holds its core, its settings and its connections; anything those hold
that leads back to the pool (a bound method given to the core as a callback,
a factory that knows its pool, a connection's ``_pool``) would make a
reference cycle, and the pool, its threads and its server connections would
then outlive the last reference until a collection happens to run. What they
hold instead is one of these: they reach the pool while it exists, and do
nothing (or what a pool-less object would do) once it is gone.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from typing import Any


class WeakMethod:
    """``obj.method`` held weakly: calling it calls the method while ``obj``
    lives, and returns ``default`` once it is gone.

    It compares equal to the bound method it stands for, so code that asks
    whether an attribute is still ``obj.method`` keeps working."""

    __slots__ = ("__weakref__", "_default", "_func", "_ref")

    def __init__(self, method: Any, default: Any = None) -> None:
        self._ref = weakref.ref(method.__self__)
        self._func: Callable[..., Any] = method.__func__
        self._default = default

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        obj = self._ref()
        if obj is None:
            return self._default
        return self._func(obj, *args, **kwargs)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, WeakMethod):
            return self._func is other._func and self._ref() is other._ref()
        return getattr(other, "__func__", None) is self._func and (
            getattr(other, "__self__", None) is self._ref()
        )

    def __hash__(self) -> int:
        return hash(self._func)

    def __repr__(self) -> str:
        return f"<weak {self._func.__qualname__} of {self._ref()!r}>"


def weak_callback(callback: Any) -> Any:
    """``callback`` itself, or a :class:`WeakMethod` of it when it is a
    bound method (whose object would otherwise be kept alive)."""
    if getattr(callback, "__self__", None) is not None and hasattr(callback, "__func__"):
        return WeakMethod(callback)
    return callback


class PoolLink:
    """A pooled connection's ``_pool``: its pool, held weakly.

    The driver reads ``conn._pool`` for two things (psycopg: ``with conn:``
    leaves a connection with a truthy ``_pool`` open; ``close()`` with the
    pool's ``close_returns`` set gives it back with ``putconn``); attributes
    read through the link are the pool's. Once the pool is gone the link is
    false and has no attributes, so the connection behaves as one that
    belongs to no pool (``close()`` closes it)."""

    __slots__ = ("__weakref__", "_ref")

    def __init__(self, pool: Any) -> None:
        self._ref = weakref.ref(pool)

    @property
    def pool(self) -> Any:
        """The pool, or None once it is gone."""
        return self._ref()

    def __bool__(self) -> bool:
        return self._ref() is not None

    def __getattr__(self, name: str) -> Any:
        pool = self._ref()
        if pool is None:
            raise AttributeError(f"{name!r}: the connection's pool is gone")
        return getattr(pool, name)

    def __repr__(self) -> str:
        return f"<link to {self._ref()!r}>"


#: A fork child's copies of the parent's connections, where no reference
#: counting applies (see :func:`keep_forever`).
_fork_orphans: list[Any] = []


def keep_forever(obj: Any) -> None:
    """Make sure ``obj`` is never finalized in this process.

    In a fork child the parent's connections share the parent's sockets:
    closing or finalizing one (some drivers close on garbage collection,
    asyncio drivers touch the parent's event loop) can end or confuse the
    parent's session. An extra reference that is never dropped keeps the
    object alive through interpreter shutdown too.
    """
    if sys.implementation.name == "cpython":
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
    else:  # pragma: no cover - no reference counting to rely on
        _fork_orphans.append(obj)
