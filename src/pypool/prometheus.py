"""Exposes a pool's statistics to Prometheus, as a custom collector of
``prometheus_client``.

Usage::

    import prometheus_client
    import pypool
    from pypool.prometheus import PoolCollector

    pool = pypool.Pool(factory, name="orders", min_size=2)
    prometheus_client.REGISTRY.register(PoolCollector(pool))
    prometheus_client.start_http_server(8000)

Several pools: one collector for them all (``PoolCollector(pool_a, pool_b)``,
or ``collector.add(pool)`` later), since a registry refuses two collectors
that expose the same metric names. Every sample has a ``pool`` label (the
pool's ``name=``; give your pools distinct names).

Nothing is measured on the pool's hot path: each scrape calls ``pool.stats()``
once per pool and converts what it says. The collector holds its pools
weakly: a pool that was garbage-collected is no longer exposed.

Needs ``prometheus_client`` (``pip install pypool[prometheus]``).

What is exposed (``pypool`` is the ``namespace`` argument; counters get
``_total``, summaries ``_count`` and ``_sum``, as ``prometheus_client``
writes them):

============================================  =======  =============================================
metric                                        type     from ``pool.stats()``
============================================  =======  =============================================
``pypool_connections{state}``                 gauge    ``db.client.connection.count``; ``state`` is
                                                       ``idle`` or ``used``
``pypool_connections_max``                    gauge    ``db.client.connection.max``
``pypool_connections_idle_max``               gauge    ``db.client.connection.idle.max``
``pypool_connections_idle_min``               gauge    ``db.client.connection.idle.min``
``pypool_pending_requests``                   gauge    ``db.client.connection.pending_requests``
``pypool_connections_connecting``             gauge    ``pypool.connections.connecting``
``pypool_timeouts_total``                     counter  ``db.client.connection.timeouts``
``pypool_connection_create_seconds``          summary  ``db.client.connection.create_time``
``pypool_wait_seconds``                       summary  ``db.client.connection.wait_time``
``pypool_wait_seconds_max``                   gauge    its ``max`` (since the pool was made)
``pypool_use_seconds``                        summary  ``db.client.connection.use_time``
``pypool_requests_total``                     counter  ``pypool.requests``
``pypool_requests_waited_total``              counter  ``pypool.requests.waited``
``pypool_connections_created_total``          counter  ``pypool.connections.created``
``pypool_connections_closed_total``           counter  ``pypool.connections.closed``
``pypool_connections_lost_total``             counter  ``pypool.connections.lost``
``pypool_connections_retired_total{reason}``  counter  ``pypool.connections.retired``, by reason
``pypool_connect_errors_total``               counter  ``pypool.connect_errors``
``pypool_leaks_total``                        counter  ``pypool.leaks``
============================================  =======  =============================================

The summaries carry a count and a sum, no quantiles (the pool keeps none).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from . import stats

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["PoolCollector"]

logger = logging.getLogger("pypool")

_INSTALL_HINT = "pip install pypool[prometheus]"


def _import_client() -> Any:
    try:
        from prometheus_client import metrics_core
    except ImportError as exc:
        raise ImportError(f"pypool.prometheus needs prometheus_client: {_INSTALL_HINT}") from exc
    return metrics_core


class PoolCollector:
    """A ``prometheus_client`` collector of the statistics of ``pools``.

    Register it once: ``registry.register(PoolCollector(pool))``. ``namespace``
    prefixes every metric name. Raises ImportError without
    ``prometheus_client`` (``pip install pypool[prometheus]``).
    """

    def __init__(self, *pools: Any, namespace: str = "pypool") -> None:
        self._mc = _import_client()
        if not isinstance(namespace, str) or not namespace.isidentifier():
            raise ValueError(f"namespace must be a metric-name prefix, not {namespace!r}")
        self.namespace = namespace
        self._lock = threading.Lock()
        self._pools: list[weakref.ref[Any]] = []
        for pool in pools:
            self.add(pool)

    @property
    def pools(self) -> list[Any]:
        """The pools exposed (those still alive)."""
        with self._lock:
            return [p for p in (r() for r in self._pools) if p is not None]

    def add(self, pool: Any) -> None:
        """Exposes ``pool`` too (nothing changes if it is exposed already)."""
        if not callable(getattr(pool, "stats", None)) or not isinstance(
            getattr(pool, "name", None), str
        ):
            raise TypeError(f"PoolCollector takes pypool pools, not {type(pool).__name__}")
        with self._lock:
            if all(r() is not pool for r in self._pools):
                self._pools.append(weakref.ref(pool))

    def remove(self, pool: Any) -> None:
        """Stops exposing ``pool``."""
        with self._lock:
            self._pools = [r for r in self._pools if r() is not None and r() is not pool]

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples (what a registry checks for
        name clashes at ``register``; no pool is read)."""
        return iter(self._families().values())

    def collect(self) -> Iterator[Metric]:
        """One sample set per pool, read with one ``pool.stats()`` call each."""
        families = self._families()
        for pool in self.pools:
            try:
                s = pool.stats()
            except Exception:
                logger.debug("pool %r: stats() failed", pool.name, exc_info=True)
                continue
            self._add_samples(families, s)
        return iter(families.values())

    # ------------------------------------------------------------ internals

    def _families(self) -> dict[str, Metric]:
        mc = self._mc
        ns = self.namespace
        pool = ["pool"]
        families: dict[str, Metric] = {}

        def gauge(key: str, name: str, doc: str, labels: list[str] = pool) -> None:
            families[key] = mc.GaugeMetricFamily(f"{ns}_{name}", doc, labels=labels)

        def counter(key: str, name: str, doc: str, labels: list[str] = pool) -> None:
            families[key] = mc.CounterMetricFamily(f"{ns}_{name}", doc, labels=labels)

        def summary(key: str, name: str, doc: str) -> None:
            families[key] = mc.SummaryMetricFamily(f"{ns}_{name}", doc, labels=pool)

        gauge(
            stats.COUNT,
            "connections",
            "Open connections by state (used: borrowed).",
            ["pool", "state"],
        )
        gauge(stats.MAX, "connections_max", "The maximum number of open connections allowed.")
        gauge(
            stats.IDLE_MAX,
            "connections_idle_max",
            "The maximum number of idle open connections allowed.",
        )
        gauge(
            stats.IDLE_MIN,
            "connections_idle_min",
            "The minimum number of idle open connections allowed.",
        )
        gauge(stats.PENDING_REQUESTS, "pending_requests", "Callers waiting for a connection.")
        gauge(stats.CONNECTING, "connections_connecting", "Connects in flight.")
        counter(stats.TIMEOUTS, "timeouts", "Acquires that timed out.")
        summary(stats.CREATE_TIME, "connection_create_seconds", "Time spent creating connections.")
        summary(
            stats.WAIT_TIME,
            "wait_seconds",
            "Time spent obtaining a connection from the pool, over every hand-out.",
        )
        gauge(
            "wait_time_max",
            "wait_seconds_max",
            "The longest time spent obtaining a connection since the pool was made.",
        )
        summary(stats.USE_TIME, "use_seconds", "Time connections were borrowed, over every return.")
        counter(stats.REQUESTS, "requests", "Connections handed out.")
        counter(stats.REQUESTS_WAITED, "requests_waited", "Hand-outs that had to wait.")
        counter(stats.CREATED, "connections_created", "Connections made.")
        counter(stats.CLOSED, "connections_closed", "Connections closed by the pool.")
        counter(
            stats.LOST,
            "connections_lost",
            "Connections closed because a check or reset failed, or abandoned.",
        )
        counter(
            stats.RETIRED,
            "connections_retired",
            "Connections closed by the pool, by reason.",
            ["pool", "reason"],
        )
        counter(stats.CONNECT_ERRORS, "connect_errors", "Failed connects.")
        counter(stats.LEAKS, "leaks", "Borrows held longer than leak_timeout.")
        return families

    @staticmethod
    def _add_samples(families: dict[str, Any], s: dict[str, Any]) -> None:
        name = str(s[stats.POOL_NAME])
        for state, n in s[stats.COUNT].items():
            families[stats.COUNT].add_metric([name, state], n)
        for key in (
            stats.MAX,
            stats.IDLE_MAX,
            stats.IDLE_MIN,
            stats.PENDING_REQUESTS,
            stats.CONNECTING,
            stats.TIMEOUTS,
            stats.REQUESTS,
            stats.REQUESTS_WAITED,
            stats.CREATED,
            stats.CLOSED,
            stats.LOST,
            stats.CONNECT_ERRORS,
            stats.LEAKS,
        ):
            families[key].add_metric([name], s[key])
        for key in (stats.CREATE_TIME, stats.WAIT_TIME, stats.USE_TIME):
            summary = s[key]
            families[key].add_metric([name], count_value=summary["count"], sum_value=summary["sum"])
        families["wait_time_max"].add_metric([name], s[stats.WAIT_TIME]["max"])
        for reason, n in sorted(s[stats.RETIRED].items()):
            families[stats.RETIRED].add_metric([name, reason], n)
