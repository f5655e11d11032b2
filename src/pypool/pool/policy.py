"""The pool's policy, shared by the sync :class:`pypool.Pool` and its asyncio
twin (their settings are :mod:`pypool.pool.settings`): when to connect, the lifetime of a new
connection, what a timed-out caller is told, and the counters.

The hot path (hand-out and return of a healthy connection) is not here: it
lives in the core (:class:`pypool._core.PoolBase` and its verdicts). This
object is consulted only off the hot path, by the shells that do the I/O
(threads for :class:`Pool`, tasks for the asyncio pool).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from .._secrets import Secrets, mask_dsn
from ..errors import PoolTimeout
from .settings import Settings

__all__ = ["LIFETIME_JITTER", "Policy", "make_core", "one_line"]

logger = logging.getLogger("pypool")

#: max_lifetime is shortened by up to this fraction, at random, for each new
#: connection, so that connections made together do not expire together.
LIFETIME_JITTER = 0.05


def make_core(
    settings: Settings,
    core_module: Any,
    on_wait: Callable[[], object],
    on_abandon: Callable[[int], object],
) -> Any:
    """The core of a pool (sync or async): sizes, reuse order and the
    thresholds of the hot-path verdicts, from the settings."""
    core = core_module.CorePool(
        settings.max_size,
        max_waiting=settings.max_waiting,
        lifo=settings.lifo,
        on_wait=on_wait,
        on_abandon=on_abandon,
    )
    core.max_idle = settings.max_idle
    core.min_size = settings.min_size
    core.max_uses = settings.max_uses
    core.check_after = None if settings.check is False else settings.check_after
    return core


class Policy:
    """Decisions and counters shared by the sync and async pools."""

    def __init__(self, settings: Settings, core: Any, log: logging.Logger = logger) -> None:
        self.settings = settings
        self.core = core
        self.logger = log
        self.min_size = settings.min_size
        self.lock = threading.Lock()  # guards the counters below
        self.last_error: BaseException | None = None
        self.last_error_at = 0.0
        self.connects = 0  # attempts
        self.connect_errors = 0
        self.created = 0
        self.closed = 0
        self.retired: dict[str, int] = {}
        self.connect_time = 0.0
        self.outage_since: float | None = None  # first failed connect of an outage
        self.outage_reported = False
        self.rejected = 0  # hand-outs dropped before they were served (failed check, expired)

    # -------------------------------------------------------------- connect

    def wants_connection(self) -> bool:
        """True while a connect is needed: callers wait that neither the idle
        connections (made idle for a waiter that has not run yet) nor the
        connects in flight will serve, or the pool is under min_size.
        (Callers of reserve() re-check under the core's own limit.)"""
        core = self.core
        if core.closed or core.size >= core.max_size:
            return False
        return bool(core.waiting > core.connecting + core.idle or core.size < self.min_size)

    @property
    def failing(self) -> bool:
        """True while the database is unreachable: the last connect failed
        (an outage is under way), whenever that was."""
        return self.outage_since is not None

    def lifetime(self) -> float | None:
        """The lifetime of a new connection: max_lifetime less a random jitter."""
        life = self.settings.max_lifetime
        if life is None:
            return None
        return life * (1.0 - LIFETIME_JITTER * random.random())

    def connected(self, seconds: float) -> None:
        with self.lock:
            self.connects += 1
            self.created += 1
            self.connect_time += seconds
            self.last_error = None
            self.outage_since = None
            self.outage_reported = False

    def not_connected(self, seconds: float) -> None:
        """Takes back a :meth:`connected` whose connection the core then
        refused (the caller records the failure)."""
        with self.lock:
            self.connects -= 1
            self.created -= 1
            self.connect_time -= seconds

    def check_failed(self, exc: BaseException) -> None:
        with self.lock:
            self.last_error = exc
            self.last_error_at = time.monotonic()

    def connect_failed(self, exc: BaseException) -> bool:
        """Records a failed connect; True when the outage has now lasted
        longer than reconnect_timeout (reported once per outage). The error
        is kept (and later chained to the callers' errors) with the
        factory's passwords masked in it."""
        _scrub(self.settings.factory, exc)
        now = time.monotonic()
        with self.lock:
            self.connects += 1
            self.connect_errors += 1
            self.last_error = exc
            self.last_error_at = now
            if self.outage_since is None:
                self.outage_since = now
            give_up = (
                not self.outage_reported
                and now - self.outage_since >= self.settings.reconnect_timeout
            )
            if give_up:
                self.outage_reported = True
        self.logger.warning("pool %r: connection failed: %s", self.settings.name, one_line(exc))
        return give_up

    @staticmethod
    def backoff(previous: float) -> float:
        """The next pause between failed connects: doubling from 50 ms to 5 s,
        with the actual sleep drawn from its upper half (jitter)."""
        return min(max(previous * 2, 0.05), 5.0)

    # --------------------------------------------------------------- retire

    def retired_one(self, reason: str, exc: BaseException | None) -> None:
        """Counts a connection closed by the pool, by reason; logs a lost one
        (failed check or reset) as a warning."""
        with self.lock:
            self.retired[reason] = self.retired.get(reason, 0) + 1
            self.closed += 1
        if exc is not None:
            self.logger.warning(
                "pool %r: connection discarded (%s): %s",
                self.settings.name,
                reason,
                one_line(exc),
            )
        else:
            self.logger.debug("pool %r: connection retired (%s)", self.settings.name, reason)

    # ------------------------------------------------------------- timeouts

    def timeout_error(self, exc: PoolTimeout, timeout: float) -> PoolTimeout:
        """What a caller whose wait timed out is told: how long it waited, the
        pool's state, the idle connections the core counted when it decided
        (``idle``), and the last connection error (a failed connect or check)
        as the cause."""
        core = self.core
        error = PoolTimeout(
            f"pool {self.settings.name!r}: no connection available within {timeout:.3f} s "
            f"(size {core.size}/{core.max_size}, idle {core.idle}, in use {core.in_use}, "
            f"connecting {core.connecting}, waiting {core.waiting})"
        )
        error.idle = exc.idle  # the core's count, taken with its decision
        cause = self.last_error
        if cause is not None:
            error.__cause__ = cause
        return error

    # ---------------------------------------------------------------- stats

    def counters(self) -> dict[str, Any]:
        with self.lock:
            return {
                "connects": self.connects,
                "connect_errors": self.connect_errors,
                "connections_created": self.created,
                "connections_closed": self.closed,
                "connect_time": self.connect_time,
                "retired": dict(self.retired),
            }


def _scrub(factory: object, exc: BaseException) -> None:
    """Masks in ``exc`` (and its chain) the passwords ``factory`` connects with."""
    Secrets.of(factory).scrub(exc)


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, passwords masked."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {mask_dsn(text[0]) if text else ''}"
