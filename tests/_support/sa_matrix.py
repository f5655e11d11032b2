"""Run one SQLAlchemy pool scenario on a sync engine or an asyncio engine.

A scenario is plain synchronous code that takes an :class:`~sqlalchemy.engine.Engine`
and a runner. On a sync engine it runs as it is, and the runner's actors are
threads. On an asyncio engine (``create_async_engine``) it runs on the engine's
``sync_engine`` inside SQLAlchemy's greenlet bridge, so every pool operation
awaits as it does under ``await engine.connect()``; the runner's actors are
tasks on the same loop and its ``sleep`` awaits. One scenario thus observes
SQLAlchemy's ``QueuePool`` and ``AsyncAdaptedQueuePool`` (and pypool's) alike.

Also here: :class:`EventLog` (the pool events, each connection named by first
appearance) and :class:`LogCapture` (the pool's log records under the names
they were logged with, addresses replaced by the same kind of names).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.util import greenlet_spawn

try:  # SQLAlchemy 2.1
    from sqlalchemy.util import await_ as await_only
except ImportError:  # SQLAlchemy 2.0
    from sqlalchemy.util import await_only

#: Every pool event SQLAlchemy defines for a pool.
POOL_EVENTS = (
    "connect",
    "first_connect",
    "checkout",
    "checkin",
    "reset",
    "invalidate",
    "soft_invalidate",
    "close",
    "close_detached",
    "detach",
)

#: How long a join waits for an actor that must finish (generous: a loaded machine).
JOIN = 30.0


class Actor:
    """A scenario's concurrent actor: a thread or a task."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = threading.Event()


class SyncRunner:
    """Actors are threads; the scenario runs on the calling thread."""

    mode = "sync"

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def spawn(self, fn: Callable[..., Any], *args: Any) -> Actor:
        actor = Actor(None)

        def body() -> None:
            try:
                actor.result = fn(*args)
            except BaseException as exc:
                actor.error = exc
            finally:
                actor.finished.set()

        actor.handle = threading.Thread(target=body, daemon=True)
        actor.handle.start()
        return actor

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def done(self, actor: Actor) -> bool:
        return actor.finished.is_set()

    def join(self, actor: Actor, timeout: float = JOIN) -> Any:
        """The actor's result (its exception is raised); AssertionError if
        it has not finished within ``timeout`` seconds."""
        if not actor.finished.wait(timeout):
            raise AssertionError(f"actor still running after {timeout} s")
        if actor.error is not None:
            raise actor.error
        return actor.result


class AsyncRunner:
    """The scenario runs in a greenlet on a fresh event loop (``asyncio.run``);
    actors are tasks on that loop, each in its own greenlet."""

    mode = "async"

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def main() -> Any:
            return await greenlet_spawn(fn, *args)

        return asyncio.run(main())

    def spawn(self, fn: Callable[..., Any], *args: Any) -> Actor:
        actor = Actor(None)

        async def body() -> None:
            try:
                actor.result = await greenlet_spawn(fn, *args)
            except BaseException as exc:
                actor.error = exc
            finally:
                actor.finished.set()

        actor.handle = asyncio.get_running_loop().create_task(body())
        return actor

    def sleep(self, seconds: float) -> None:
        await_only(asyncio.sleep(seconds))

    def done(self, actor: Actor) -> bool:
        return actor.finished.is_set()

    def join(self, actor: Actor, timeout: float = JOIN) -> Any:
        await_only(asyncio.wait({actor.handle}, timeout=timeout))
        if not actor.finished.is_set():
            raise AssertionError(f"actor still running after {timeout} s")
        if actor.error is not None:
            raise actor.error
        return actor.result


Runner = SyncRunner | AsyncRunner


def runner_for(mode: str) -> Runner:
    return SyncRunner() if mode == "sync" else AsyncRunner()


class Labels:
    """Names things by order of first appearance (0, 1, ...): objects by
    identity, or, with ``by_value=True``, values (backend pids) by equality."""

    def __init__(self, *, by_value: bool = False) -> None:
        self._by_value = by_value
        self._seen: list[Any] = []  # kept alive so that identities stay unique

    def __call__(self, obj: Any) -> int | None:
        if obj is None:
            return None
        for i, seen in enumerate(self._seen):
            if (seen == obj) if self._by_value else (seen is obj):
                return i
        self._seen.append(obj)
        return len(self._seen) - 1


class EventLog:
    """Records the pool events of ``pool`` as ``(event, connection label)``;
    a ``reset`` also records its :class:`~sqlalchemy.pool.PoolResetState`."""

    def __init__(self, pool: Any, labels: Labels | None = None) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.label = Labels() if labels is None else labels
        for name in POOL_EVENTS:
            event.listen(pool, name, self._listener(name))

    def _listener(self, name: str) -> Callable[..., None]:
        def listener(dbapi_connection: Any, *args: Any) -> None:
            entry: tuple[Any, ...] = (name, self.label(dbapi_connection))
            if name == "reset" and len(args) >= 2:
                state = args[1]
                entry += (state.transaction_was_reset, state.terminate_only, state.asyncio_safe)
            self.events.append(entry)

        return listener

    def names(self) -> list[str]:
        return [e[0] for e in self.events]

    def count(self, name: str) -> int:
        return sum(1 for e in self.events if e[0] == name)


_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


class LogCapture(logging.Handler):
    """Collects the records logged under ``prefixes`` (by any logger whose
    name starts with one of them) as ``(logger name, level, message)``, with
    every ``0x...`` address replaced by ``@N``, N by order of first appearance."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__(logging.DEBUG)
        self.prefixes = prefixes
        self.records: list[tuple[str, str, str]] = []
        self._addresses: dict[str, int] = {}

    def _address(self, match: re.Match[str]) -> str:
        return "@" + str(self._addresses.setdefault(match.group(0), len(self._addresses)))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(self.prefixes):
            message = _ADDRESS.sub(self._address, record.getMessage())
            self.records.append((record.name, record.levelname, message))


@contextmanager
def capture_logs(*prefixes: str) -> Iterator[LogCapture]:
    """A :class:`LogCapture` on the root logger for the duration of the block
    (records reach it by propagation, whatever handler SQLAlchemy adds)."""
    handler = LogCapture(prefixes)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


@contextmanager
def logger_level(name: str, level: int) -> Iterator[None]:
    """Sets a logger's level for the block, then restores it."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
