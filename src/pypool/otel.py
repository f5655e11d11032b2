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

Every statistic of :data:`pypool.stats.METRICS` but the ``info`` ones (the
metrics of the semantic conventions for database client connection pools,
with their conventional instrument kinds and units, then pypool's own under
``pypool.*`` names), each carrying ``db.client.connection.pool.name``: a
``gauge`` as an observable up-down counter, a ``counter`` as an observable
counter. ``db.client.connection.count`` has the attribute
``db.client.connection.state`` too (``idle`` or ``used``), and
``pypool.connections.retired`` the attribute
``pypool.connection.close_reason`` (``idle``, ``expired``, ``broken``, ...).

**Deviation: no histograms.** The conventions make ``create_time``,
``wait_time`` and ``use_time`` histograms, recorded once per connect, hand-out
and return. The pool keeps only a count and a sum of each (recording every
event would put Python code on the hot path), and a histogram cannot be
rebuilt from those. So each (a ``summary`` in :data:`~pypool.stats.METRICS`)
is published as two observable counters, ``<metric>.count`` (in the
metric's unit) and ``<metric>.sum`` (seconds), from which a backend computes
the mean over any interval (``rate(sum) / rate(count)``), and
``db.client.connection.wait_time.max`` as an observable gauge (seconds): the
longest wait since the pool was made (or since a fork, in a child process),
not a per-interval maximum.

The instruments, as generated from the table:

{instruments}

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

POOL_NAME = stats.POOL_NAME


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
        """One instrument per metric of :data:`pypool.stats.METRICS` (three
        or two for a summary: its count, sum and max)."""
        kinds = {
            "gauge": meter.create_observable_up_down_counter,
            "counter": meter.create_observable_counter,
            "max": meter.create_observable_gauge,
        }
        for metric in stats.METRICS:
            if metric.kind == "info":
                continue
            if metric.kind == "summary":
                for part in metric.fields:
                    kind = "max" if part == "max" else "counter"
                    unit = metric.unit if part == "count" else "s"
                    name = f"{metric.key}.{part}"
                    kinds[kind](
                        name,
                        callbacks=[self._observe(name, _field(metric.key, part))],
                        unit=unit,
                        description=f"{_sentence(metric.description)} ({_PARTS[part]}).",
                    )
                continue
            values = _split(metric) if metric.attribute else _field(metric.key, None)
            kinds[metric.kind](
                metric.key,
                callbacks=[self._observe(metric.key, values)],
                unit=metric.unit,
                description=f"{_sentence(metric.description)}.",
            )


#: What each field of a summary is, in an instrument's description.
_PARTS = {
    "count": "the count",
    "sum": "the sum, in seconds",
    "max": "the longest, since the pool was made",
}


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _field(key: str, part: str | None) -> Callable[[dict[str, Any]], Any]:
    """The value of ``key`` in a snapshot (of its field ``part``)."""

    def values(s: dict[str, Any]) -> list[tuple[float, dict[str, str]]]:
        value = s[key] if part is None else s[key][part]
        return [(value, {})]

    return values


def _split(metric: stats.Metric) -> Callable[[dict[str, Any]], Any]:
    """One observation per key of a dict value, with the key as attribute."""

    def values(s: dict[str, Any]) -> list[tuple[float, dict[str, str]]]:
        return [(n, {metric.attribute: k}) for k, n in s[metric.key].items()]

    return values


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


def _instruments() -> str:
    kinds = {
        "gauge": "observable up-down counter",
        "counter": "observable counter",
        "max": "observable gauge",
    }
    rows = [("metric", "instrument", "unit")]
    for metric in stats.METRICS:
        if metric.kind == "summary":
            for part in metric.fields:
                kind = "max" if part == "max" else "counter"
                unit = metric.unit if part == "count" else "s"
                rows.append((f"``{metric.key}.{part}``", kinds[kind], unit))
        elif metric.kind != "info":
            rows.append((f"``{metric.key}``", kinds[metric.kind], metric.unit))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=True)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows[1:]]
    lines.append(rule)
    return "\n".join(line.rstrip() for line in lines)


__doc__ = (__doc__ or "").replace("{instruments}", _instruments())
