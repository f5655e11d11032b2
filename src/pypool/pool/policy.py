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
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from .._secrets import Secrets, mask_dsn
from .._weak import weak_callback
from ..errors import PoolTimeout
from .settings import Settings

__all__ = ["LIFETIME_JITTER", "Policy", "jitter", "make_core", "one_line"]

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
    thresholds of the hot-path verdicts, from the settings. The core holds
    the callbacks weakly when they are the pool's own methods (no reference
    cycle through the core: a dropped pool goes at once)."""
    core = core_module.CorePool(
        settings.max_size,
        max_waiting=settings.max_waiting,
        lifo=settings.lifo,
        on_wait=weak_callback(on_wait),
        on_abandon=weak_callback(on_abandon),
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
        self.outage_failures = 0  # failed connects of the outage under way
        self.outage_logged_at = 0.0  # when one was last logged, and the pace:
        self.outage_log_every = 0.0  # doubling from 1 s to the backoff's 5 s
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
            self.outage_failures = 0
        self.logger.debug("pool %r: connection made in %.3f s", self.settings.name, seconds)

    def not_connected(self, seconds: float) -> None:
        """Takes back a :meth:`connected` whose connection the core then
        refused (the caller records the failure)."""
        with self.lock:
            self.connects -= 1
            self.created -= 1
            self.connect_time -= seconds

    def check_failed(self, exc: BaseException) -> None:
        """Keeps a failed check's error, without its traceback: that one
        leads, frame by frame, to the borrower's frames (and through their
        variables, often to the pool itself), which it would keep alive."""
        for error in _chain(exc):
            error.__traceback__ = None
        with self.lock:
            self.last_error = exc
            self.last_error_at = time.monotonic()

    def connect_failed(self, exc: BaseException) -> bool:
        """Records a failed connect; True when the outage has now lasted
        longer than reconnect_timeout (reported once per outage). The error
        is kept (and later chained to the callers' errors) with the
        factory's passwords masked in it."""
        _scrub(self.settings.factory, exc)
        _release_frames(exc)
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
            # Logged once when the outage starts, then with a count at a
            # pace that slows as the retries do (not every few ms).
            self.outage_failures += 1
            failures = self.outage_failures
            log = failures == 1 or now - self.outage_logged_at >= self.outage_log_every
            if log:
                self.outage_logged_at = now
                self.outage_log_every = (
                    1.0 if failures == 1 else min(self.outage_log_every * 2, 5.0)
                )
            since = now - self.outage_since
        if log and failures == 1:
            self.logger.warning("pool %r: connection failed: %s", self.settings.name, one_line(exc))
        elif log:
            self.logger.warning(
                "pool %r: connection failed, reconnection attempt %d in %.1f s: %s",
                self.settings.name,
                failures,
                since,
                one_line(exc),
            )
        return give_up

    @staticmethod
    def backoff(previous: float) -> float:
        """The next pause between failed connects: doubling from 50 ms to 5 s,
        with the actual sleep drawn from its upper half (:func:`jitter`)."""
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
            self.logger.debug("pool %r: connection closed (%s)", self.settings.name, reason)

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


def jitter(seconds: float) -> float:
    """A pause of up to ``seconds``, drawn at random from its upper half, so
    that the pools and callers that back off together do not retry together."""
    return seconds * (0.5 + 0.5 * random.random())


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during, once each."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _release_frames(exc: BaseException) -> None:
    """Drops the tracebacks of a kept connect error and its chain, keeping
    the lines as a note (Python 3.11+) for when it shows as a caller's
    cause. Their frames include the pool's own methods: kept, they would
    make a reference cycle through the pool, which would then outlive its
    last reference; and a frame cannot be cleared safely while it may still
    run, in this thread or (a coroutine's) suspended in another task."""
    lines = traceback.format_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    for error in _chain(exc):
        error.__traceback__ = None
    if lines and hasattr(exc, "add_note"):
        exc.add_note(mask_dsn("where the connect failed:\n" + "".join(lines).rstrip()))


def _scrub(factory: object, exc: BaseException) -> None:
    """Masks in ``exc`` (and its chain) the passwords ``factory`` connects with."""
    Secrets.of(factory).scrub(exc)


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, passwords masked."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {mask_dsn(text[0]) if text else ''}"
