"""Publishes a pool's statistics through the OpenTelemetry metrics API.

Usage::

    import pypool
    import pypool.otel

    pool = pypool.Pool(factory, name="orders", min_size=2)
    handle = pypool.otel.instrument(pool)  # the global MeterProvider
    ...
    handle.close()  # stop publishing this pool (optional)

``instrument(pool, meter_provider=None)`` registers observable instruments on
a meter named ``"pypool"`` of ``meter_provider`` (default: the global one, from
``opentelemetry.metrics.get_meter_provider()``). Nothing is measured on the
pool's hot path: when the SDK collects, the callbacks read ``pool.stats()``,
once per pool per collection, and report what it says. Instrument as many
pools as you like on one provider: the instruments are created once per
provider and report every pool instrumented there, told apart by the
``db.client.connection.pool.name`` attribute (give your pools distinct
``name=``). A pool is reported until its handle is closed or the pool is
garbage-collected.

Needs ``opentelemetry-api`` (``pip install pypool[opentelemetry]``); an SDK
(``opentelemetry-sdk``) or another API implementation must be configured for
anything to be exported.

What is published
=================

Metrics of the semantic conventions for database client connection pools,
with their conventional instrument kinds and units (every one carries
``db.client.connection.pool.name``):

==========================================  ==========================  =============
metric                                      instrument                  unit
==========================================  ==========================  =============
``db.client.connection.count``              observable up-down counter  {connection}
``db.client.connection.max``                observable up-down counter  {connection}
``db.client.connection.idle.max``           observable up-down counter  {connection}
``db.client.connection.idle.min``           observable up-down counter  {connection}
``db.client.connection.pending_requests``   observable up-down counter  {request}
``db.client.connection.timeouts``           observable counter          {timeout}
==========================================  ==========================  =============

``db.client.connection.count`` has the attribute ``db.client.connection.state``
too: ``idle`` or ``used``.

**Deviation: no histograms.** The conventions make ``create_time``,
``wait_time`` and ``use_time`` histograms, recorded once per connect, hand-out
and return. The pool keeps only a count and a sum of each (recording every
event would put Python code on the hot path), and a histogram cannot be
rebuilt from those. So each is published as two observable counters,
``<metric>.count`` and ``<metric>.sum`` (seconds), from which a backend
computes the mean over any interval (``rate(sum) / rate(count)``):

==========================================  ==================  ============
metric                                      instrument          unit
==========================================  ==================  ============
``db.client.connection.create_time.count``  observable counter  {connection}
``db.client.connection.create_time.sum``    observable counter  s
``db.client.connection.wait_time.count``    observable counter  {request}
``db.client.connection.wait_time.sum``      observable counter  s
``db.client.connection.wait_time.max``      observable gauge    s
``db.client.connection.use_time.count``     observable counter  {request}
``db.client.connection.use_time.sum``       observable counter  s
==========================================  ==================  ============

``wait_time.max`` is the longest wait since the pool was made (or since a
fork, in a child process), not a per-interval maximum.

pypool's own statistics (see :mod:`pypool.stats`), under ``pypool.*`` names:
``pypool.connections.connecting`` (observable up-down counter),
``pypool.requests``, ``pypool.requests.waited``,
``pypool.connections.created``, ``pypool.connections.closed``,
``pypool.connections.lost``, ``pypool.connect_errors``, ``pypool.leaks``, and
``pypool.connections.retired`` with the attribute
``pypool.connection.close_reason`` (``idle``, ``expired``, ``broken``, ...):
observable counters.

The counters start again from zero in a forked child process (so do the
pool's own counters); cumulative backends treat that as a counter reset.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import stats

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

__all__ = ["Instrumentation", "instrument"]

logger = logging.getLogger("pypool")

_INSTALL_HINT = "pip install pypool[opentelemetry]"

#: The name of the meter the instruments are created on.
METER_NAME = "pypool"

STATE = "db.client.connection.state"
POOL_NAME = stats.POOL_NAME
CLOSE_REASON = "pypool.connection.close_reason"


def _import_api() -> Any:
    try:
        from opentelemetry import metrics
    except ImportError as exc:
        raise ImportError(
            f"pypool.otel needs the OpenTelemetry API (opentelemetry-api): {_INSTALL_HINT}"
        ) from exc
    return metrics


# ------------------------------------------------------------------ sources


class _Source:
    """One instrumented pool: its statistics, read once per collection.

    The callbacks of every instrument ask for the snapshot; it is read anew
    when an instrument asks that has already been served the current one (a
    new collection has begun), so each collection reads ``pool.stats()``
    once, whatever order the SDK calls the callbacks in.
    """

    __slots__ = ("_ref", "_served", "_snapshot", "name")

    def __init__(self, pool: Any) -> None:
        self._ref = weakref.ref(pool)
        self.name: str = pool.name
        self._snapshot: dict[str, Any] | None = None
        self._served: set[str] = set()

    def read(self, instrument: str) -> dict[str, Any] | None:
        """The statistics for ``instrument`` (None: the pool is gone).
        Called under the registry's lock."""
        if self._snapshot is None or instrument in self._served:
            pool = self._ref()
            if pool is None:
                return None
            try:
                self._snapshot = pool.stats()
            except Exception:
                logger.debug("pool %r: stats() failed", self.name, exc_info=True)
                return None
            self._served.clear()
        self._served.add(instrument)
        return self._snapshot

    @property
    def alive(self) -> bool:
        return self._ref() is not None


class _Registry:
    """The instruments of one meter provider and the pools they report."""

    def __init__(self, meter: Meter) -> None:
        self.lock = threading.Lock()
        self.sources: dict[int, _Source] = {}
        self._build(meter)

    def add(self, pool: Any) -> _Source:
        with self.lock:
            source = _Source(pool)
            self.sources[id(source)] = source
            return source

    def remove(self, source: _Source) -> None:
        with self.lock:
            self.sources.pop(id(source), None)

    def _observe(
        self,
        instrument: str,
        values: Callable[[dict[str, Any]], Iterable[tuple[float, dict[str, str]]]],
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        from opentelemetry.metrics import Observation

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            observations: list[Observation] = []
            with self.lock:
                for key, source in list(self.sources.items()):
                    snapshot = source.read(instrument)
                    if snapshot is None:
                        if not source.alive:
                            del self.sources[key]
                        continue
                    base = {POOL_NAME: source.name}
                    for value, extra in values(snapshot):
                        observations.append(Observation(value, {**base, **extra}))
            return observations

        return callback

    def _build(self, meter: Meter) -> None:
        def plain(key: str, field: str | None = None) -> Callable[[dict[str, Any]], Any]:
            def values(s: dict[str, Any]) -> list[tuple[float, dict[str, str]]]:
                value = s[key] if field is None else s[key][field]
                return [(value, {})]

            return values

        def by_state(s: dict[str, Any]) -> list[tuple[float, dict[str, str]]]:
            return [(n, {STATE: state}) for state, n in s[stats.COUNT].items()]

        def by_reason(s: dict[str, Any]) -> list[tuple[float, dict[str, str]]]:
            return [(n, {CLOSE_REASON: reason}) for reason, n in s[stats.RETIRED].items()]

        up_down = meter.create_observable_up_down_counter
        counter = meter.create_observable_counter
        gauge = meter.create_observable_gauge
        specs: list[tuple[Any, str, Callable[[dict[str, Any]], Any], str, str]] = [
            (
                up_down,
                stats.COUNT,
                by_state,
                "{connection}",
                "The number of connections that are currently in state described by the "
                "state attribute.",
            ),
            (
                up_down,
                stats.MAX,
                plain(stats.MAX),
                "{connection}",
                "The maximum number of open connections allowed.",
            ),
            (
                up_down,
                stats.IDLE_MAX,
                plain(stats.IDLE_MAX),
                "{connection}",
                "The maximum number of idle open connections allowed.",
            ),
            (
                up_down,
                stats.IDLE_MIN,
                plain(stats.IDLE_MIN),
                "{connection}",
                "The minimum number of idle open connections allowed.",
            ),
            (
                up_down,
                stats.PENDING_REQUESTS,
                plain(stats.PENDING_REQUESTS),
                "{request}",
                "The number of current pending requests for an open connection.",
            ),
            (
                counter,
                stats.TIMEOUTS,
                plain(stats.TIMEOUTS),
                "{timeout}",
                "The number of connection timeouts that have occurred trying to obtain a "
                "connection from the pool.",
            ),
            (
                counter,
                stats.CREATE_TIME + ".count",
                plain(stats.CREATE_TIME, "count"),
                "{connection}",
                "Connections created (the count of create_time).",
            ),
            (
                counter,
                stats.CREATE_TIME + ".sum",
                plain(stats.CREATE_TIME, "sum"),
                "s",
                "Total time spent creating connections (the sum of create_time).",
            ),
            (
                counter,
                stats.WAIT_TIME + ".count",
                plain(stats.WAIT_TIME, "count"),
                "{request}",
                "Connections obtained from the pool (the count of wait_time).",
            ),
            (
                counter,
                stats.WAIT_TIME + ".sum",
                plain(stats.WAIT_TIME, "sum"),
                "s",
                "Total time spent obtaining connections (the sum of wait_time).",
            ),
            (
                gauge,
                stats.WAIT_TIME + ".max",
                plain(stats.WAIT_TIME, "max"),
                "s",
                "The longest time spent obtaining a connection since the pool was made.",
            ),
            (
                counter,
                stats.USE_TIME + ".count",
                plain(stats.USE_TIME, "count"),
                "{request}",
                "Connections returned to the pool (the count of use_time).",
            ),
            (
                counter,
                stats.USE_TIME + ".sum",
                plain(stats.USE_TIME, "sum"),
                "s",
                "Total time connections were borrowed (the sum of use_time).",
            ),
            (
                up_down,
                stats.CONNECTING,
                plain(stats.CONNECTING),
                "{connection}",
                "Connects in flight.",
            ),
            (
                counter,
                stats.REQUESTS,
                plain(stats.REQUESTS),
                "{request}",
                "Connections handed out.",
            ),
            (
                counter,
                stats.REQUESTS_WAITED,
                plain(stats.REQUESTS_WAITED),
                "{request}",
                "Hand-outs that had to wait.",
            ),
            (counter, stats.CREATED, plain(stats.CREATED), "{connection}", "Connections made."),
            (
                counter,
                stats.CLOSED,
                plain(stats.CLOSED),
                "{connection}",
                "Connections closed by the pool.",
            ),
            (
                counter,
                stats.LOST,
                plain(stats.LOST),
                "{connection}",
                "Connections closed because a check or reset failed, or abandoned.",
            ),
            (
                counter,
                stats.RETIRED,
                by_reason,
                "{connection}",
                "Connections closed by the pool, by reason.",
            ),
            (
                counter,
                stats.CONNECT_ERRORS,
                plain(stats.CONNECT_ERRORS),
                "{error}",
                "Failed connects.",
            ),
            (
                counter,
                stats.LEAKS,
                plain(stats.LEAKS),
                "{connection}",
                "Borrows reported as held longer than leak_timeout.",
            ),
        ]
        for create, name, values, unit, description in specs:
            create(
                name,
                callbacks=[self._observe(name, values)],
                unit=unit,
                description=description,
            )


_registries: weakref.WeakKeyDictionary[Any, _Registry] = weakref.WeakKeyDictionary()
_registries_lock = threading.Lock()


def _registry_for(provider: MeterProvider) -> _Registry:
    from . import __version__

    with _registries_lock:
        registry = _registries.get(provider)
        if registry is None:
            registry = _Registry(provider.get_meter(METER_NAME, __version__))
            _registries[provider] = registry
        return registry


# ------------------------------------------------------------------ public


class Instrumentation:
    """What :func:`instrument` returns: ``close()`` stops publishing the pool
    (idempotent); also a context manager."""

    def __init__(self, pool: Any, registry: _Registry, source: _Source) -> None:
        self._pool = weakref.ref(pool)
        self._registry: _Registry | None = registry
        self._source = source

    @property
    def pool(self) -> Any:
        """The instrumented pool (None once it was garbage-collected)."""
        return self._pool()

    @property
    def closed(self) -> bool:
        return self._registry is None

    def close(self) -> None:
        registry, self._registry = self._registry, None
        if registry is not None:
            registry.remove(self._source)

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "publishing"
        return f"<pypool.otel.Instrumentation {self._source.name!r} {state}>"


def instrument(pool: Any, meter_provider: MeterProvider | None = None) -> Instrumentation:
    """Publishes ``pool.stats()`` through OpenTelemetry metrics on
    ``meter_provider`` (default: the global meter provider) until the returned
    handle is closed or the pool is garbage-collected. Raises ImportError
    without ``opentelemetry-api`` (``pip install pypool[opentelemetry]``)."""
    metrics = _import_api()
    if not callable(getattr(pool, "stats", None)) or not isinstance(
        getattr(pool, "name", None), str
    ):
        raise TypeError(f"instrument() takes a pypool pool, not {type(pool).__name__}")
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    registry = _registry_for(provider)
    return Instrumentation(pool, registry, registry.add(pool))
