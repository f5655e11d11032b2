"""``pypool.Pool``: the connection pool for threads.

The hot path (``acquire``, ``release``, ``connection()`` of a healthy
connection) is :class:`PoolBase`, from the core: native code, or its Python
twin. This module adds what needs I/O or time: connect workers, checks,
retirement and closing of connections, and the pool's lifecycle.
"""

from __future__ import annotations

import threading
import time
import types
from typing import Any

from . import _core
from ._policy import Policy, Settings, check_sizes, logger
from .errors import PoolClosed, PoolTimeout

__all__ = ["Pool"]

_DEFAULT = object()


class _PoolMethods:
    """Everything of Pool but the hot path, which comes from PoolBase."""

    _core: Any
    _policy: Policy
    _settings: Settings

    def __init__(
        self,
        factory: Any,
        *,
        adapter: Any = None,
        min_size: int = 0,
        max_size: int = 10,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float | None = 3600.0,
        max_idle: float | None = 600.0,
        max_uses: int = 0,
        check: Any = None,
        check_after: float | None = 1.0,
        reset: Any = None,
        configure: Any = None,
        num_workers: int = 2,
        name: str | None = None,
        lifo: bool = True,
        _core: types.ModuleType | None = None,
    ) -> None:
        if adapter is None:
            from . import dbapi

            adapter = dbapi
        settings = Settings(
            factory,
            adapter=adapter,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            max_uses=max_uses,
            check=check,
            check_after=check_after,
            reset=reset,
            configure=configure,
            num_workers=num_workers,
            name=name,
            lifo=lifo,
        )
        core_module = _module_of(type(self))
        self._workers_ready = threading.Event()
        self._wake = threading.Condition(threading.Lock())
        core = core_module.CorePool(
            settings.max_size,
            max_waiting=settings.max_waiting,
            lifo=settings.lifo,
            on_wait=self._on_wait,
            on_abandon=self._on_abandon,
        )
        core.max_idle = settings.max_idle
        core.max_uses = settings.max_uses
        core.check_after = None if settings.check is False else settings.check_after
        reset_plan = None if settings.reset in (None, False) else settings.reset
        core_module.PoolBase.__init__(self, core, settings.timeout, reset_plan)  # type: ignore[arg-type]
        self._settings = settings
        self._policy = Policy(settings, core)
        self._reset_known = settings.reset is not None
        self._workers: list[threading.Thread] = []
        self._closing = False
        if settings.min_size:
            self.open()

    # ----------------------------------------------------------- properties

    @property
    def name(self) -> str:
        return self._settings.name

    @property
    def core(self) -> str:
        """Which core runs this pool: ``"native"`` or ``"python"``."""
        return _core_name(type(self._core))

    @property
    def min_size(self) -> int:
        return self._policy.min_size

    @property
    def max_size(self) -> int:
        return int(self._core.max_size)

    @property
    def timeout(self) -> float:
        return self._settings.timeout

    @property
    def closed(self) -> bool:
        return bool(self._core.closed)

    @property
    def size(self) -> int:
        """Connections open or being opened."""
        return int(self._core.size)

    @property
    def idle(self) -> int:
        return int(self._core.idle)

    @property
    def in_use(self) -> int:
        return int(self._core.in_use)

    @property
    def waiting(self) -> int:
        return int(self._core.waiting)

    def stats(self) -> dict[str, Any]:
        """The core's counters and gauges, and the pool's connect counters."""
        result: dict[str, Any] = dict(self._core.stats())
        result.update(self._policy.counters())
        result["min_size"] = self._policy.min_size
        result["name"] = self._settings.name
        return result

    # ------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Starts the connect workers (also done on first need). Idempotent."""
        if self._core.closed:
            raise PoolClosed(f"pool {self.name!r} is closed")
        if self._workers_ready.is_set():
            return
        with self._wake:
            if self._workers_ready.is_set():
                return
            for i in range(self._settings.num_workers):
                t = threading.Thread(
                    target=self._connect_worker,
                    name=f"pypool-{self.name}-connect-{i}",
                    daemon=True,
                )
                t.start()
                self._workers.append(t)
            self._workers_ready.set()
            self._wake.notify_all()
        logger.info("pool %r opened (%s core)", self.name, self.core)

    def close(self, timeout: float = 5.0) -> None:
        """Closes the pool: idle connections at once, borrowed ones when they
        are returned; callers still waiting get :class:`PoolClosed`. Waits up
        to ``timeout`` seconds for connects in flight to end. Idempotent."""
        if self._closing:
            return
        self._closing = True
        idle = self._core.close()
        with self._wake:
            self._wake.notify_all()
        for conn in idle:
            self._close_connection(conn, "closed", None)
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        # A connection handed to a waiter that then gave up is passed on as idle.
        for conn in self._core.close():
            self._close_connection(conn, "closed", None)
        logger.info("pool %r closed", self.name)

    def __enter__(self) -> Any:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Without close(), idle connections would only go with the core.
        if not getattr(self, "_closing", True):
            try:
                self.close(timeout=0)
            except Exception:  # pragma: no cover - interpreter shutdown
                pass

    # ---------------------------------------------------------- resizing

    def resize(self, min_size: int, max_size: int) -> None:
        """Changes the sizes while the pool is in use. Growth happens on
        demand (and at once up to ``min_size``); when shrinking, idle
        connections over ``max_size`` are closed now and borrowed ones when
        they are returned."""
        lo, hi = check_sizes(min_size, max_size)
        self._core.max_size = hi
        self._policy.min_size = lo
        self._shrink_to(hi)
        self._wake_workers()
        if lo:
            self.open()

    def _shrink_to(self, max_size: int) -> None:
        core = self._core
        # Oldest returned first: the hot connections stay.
        idle = sorted(core.slots(_core.IDLE), key=lambda i: core.slot_info(i)[3])
        for index in idle:
            if core.size <= max_size:
                break
            conn = core.claim(index)
            if conn is not None:
                core.retire(index)
                self._close_connection(conn, "shrunk", None)

    def drain(self) -> None:
        """Replaces every connection: idle ones now, borrowed ones when they
        are returned. New ones are made as needed (and up to ``min_size``)."""
        core = self._core
        core.advance_generation()
        for index in core.slots(_core.IDLE):
            conn = core.claim(index)
            if conn is not None:
                core.retire(index)
                self._close_connection(conn, "drained", None)
        self._wake_workers()

    def invalidate(self) -> None:
        """Marks every connection made before now for replacement at its next
        hand-out or return (for example after the database restarted)."""
        self._core.advance_generation()

    # ------------------------------------------------------------- hooks

    def _vet(self, conn: Any) -> BaseException | None:
        check = self._settings.check
        try:
            if check is None:
                self._settings.adapter.check(conn)
            elif check is not False:
                check(conn)
        except Exception as exc:
            return exc
        return None

    def _retire(self, conn: Any, reason: int, exc: BaseException | None) -> None:
        self._close_connection(conn, _core.REASONS[reason], exc)
        self._wake_workers()

    def _timed_out(self, exc: PoolTimeout) -> BaseException:
        if not self._workers_ready.is_set() and not self._core.closed:
            self.open()
        return self._policy.timeout_error(exc)

    def _on_wait(self) -> None:
        if not self._workers_ready.is_set():
            self.open()
        self._wake_workers()

    def _on_abandon(self, slot: int) -> None:
        self._policy.retired_one("abandoned", None)
        logger.warning(
            "pool %r: a borrowed connection was garbage-collected without being "
            "returned (slot %d); return connections with release() or use "
            "connection()",
            self.name,
            slot,
        )
        self._wake_workers()

    # ----------------------------------------------------------- workers

    def _wake_workers(self) -> None:
        if self._policy.wants_connection():
            with self._wake:
                self._wake.notify()

    def _connect_worker(self) -> None:
        policy = self._policy
        core = self._core
        backoff = 0.0
        while True:
            with self._wake:
                while not core.closed and not policy.wants_connection():
                    self._wake.wait(1.0)
            if core.closed:
                return
            # Re-check demand at the last moment: a connection returned
            # meanwhile may have served the waiter.
            slot = core.reserve() if policy.wants_connection() else None
            if slot is None:
                continue
            ok = self._connect_into(slot)
            if ok:
                backoff = 0.0
            else:
                backoff = min(max(backoff * 2, 0.05), 5.0)
                with self._wake:
                    self._wake.wait(backoff * (0.5 + 0.5 * _jitter()))

    def _connect_into(self, slot: int) -> bool:
        settings = self._settings
        core = self._core
        started = time.monotonic()
        try:
            conn = settings.factory()
        except Exception as exc:
            core.abandon(slot)
            self._policy.connect_failed(exc)
            return False
        try:
            if settings.configure is not None:
                settings.configure(conn)
            if not self._reset_known:
                plan = settings.adapter.reset_for(conn)
                self._set_reset(plan)
                self._reset_known = True
        except Exception as exc:
            core.abandon(slot)
            self._policy.connect_failed(exc)
            settings.adapter.close(conn)
            return False
        self._policy.connected(time.monotonic() - started)
        try:
            core.fill(slot, conn, self._policy.lifetime())
        except PoolClosed:
            self._close_connection(conn, "closed", None)
        return True

    def _close_connection(self, conn: Any, reason: str, exc: BaseException | None) -> None:
        self._policy.retired_one(reason, exc)
        self._settings.adapter.close(conn)

    def __repr__(self) -> str:
        core = self._core
        state = "closed" if core.closed else "open"
        return (
            f"<pypool.Pool {self.name!r} {state} core={self.core} "
            f"size={core.size}/{core.max_size} min={self._policy.min_size} "
            f"idle={core.idle} in_use={core.in_use} waiting={core.waiting}>"
        )


def _jitter() -> float:
    import random

    return random.random()


def _core_name(core_type: type) -> str:
    return "python" if core_type.__module__.endswith("_corepool_py") else "native"


def _module_of(pool_type: type) -> types.ModuleType:
    for base in pool_type.__mro__:
        if base.__name__ == "PoolBase":
            import sys

            return sys.modules[base.__module__]
    raise TypeError(f"{pool_type!r} does not derive from a core's PoolBase")


_variants: dict[types.ModuleType, type] = {}


def _variant(core_module: types.ModuleType) -> type:
    """The Pool class built on ``core_module``'s PoolBase (for ``_core=``)."""
    cls = _variants.get(core_module)
    if cls is None:
        cls = type(
            "Pool",
            (_PoolMethods, core_module.PoolBase),
            {"__module__": __name__, "__doc__": Pool.__doc__, "__new__": _new},
        )
        _variants[core_module] = cls
    return cls


def _new(cls: type, *args: Any, _core: types.ModuleType | None = None, **kwargs: Any) -> Any:
    if _core is not None and _module_of(cls) is not _core:
        other = _variant(_core)
        self = other.__new__(other)
        self.__init__(*args, **kwargs)  # type: ignore[misc]
        return self
    return super(_PoolMethods, cls).__new__(cls)  # type: ignore[misc]


class Pool(_PoolMethods, _core.PoolBase):  # type: ignore[misc]
    """A pool of database connections for threads.

    ``factory()`` makes a new connection; it runs on ``num_workers`` connect
    workers, never on your thread. Borrow with ``with pool.connection() as
    conn:`` (or :meth:`acquire` and :meth:`release`: you must release every
    connection you acquire, or the pool runs dry).

    Defaults, and why:

    - ``adapter=pypool.dbapi``: works with any DB-API 2 driver.
    - ``min_size=0``: connect on demand; set it for a warm pool.
    - ``max_size=10``: a small pool outperforms a large one (the database
      runs at most a few queries per core at once); measure with
      ``pypool sweep``.
    - ``timeout=30.0``: how long ``acquire`` waits before
      :class:`PoolTimeout`, as psycopg_pool and SQLAlchemy do.
    - ``max_waiting=0``: an unbounded queue; set it to shed load with
      :class:`TooManyRequests` instead.
    - ``max_lifetime=3600.0``: replace connections hourly (less up to 5% at
      random, so they do not expire together), below common server and
      proxy limits; None: never.
    - ``max_idle=600.0``: an idle connection older than this is closed
      rather than handed out; None: never.
    - ``max_uses=0``: no limit on hand-outs per connection.
    - ``check=None``: the adapter's check (a ping), run before hand-out on
      connections idle more than ``check_after=1.0`` seconds, so a connection
      used a moment ago costs no round trip; ``check=False``: never.
    - ``reset=None``: the adapter's reset on return (roll back an open
      transaction); a method name, a callable, or ``False`` (none).
    - ``configure=None``: ``configure(conn)`` runs once on each new connection.
    - ``num_workers=2``: connects in flight at once; more would only flood a
      recovering database.
    - ``lifo=True``: reuse the most recently returned connection first, so
      surplus ones go idle and are retired; ``False`` for round-robin.
    """

    __new__ = _new  # type: ignore[assignment]


_variants[_module_of(Pool)] = Pool
