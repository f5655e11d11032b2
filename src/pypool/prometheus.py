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


{metrics}

One metric per statistic of :data:`pypool.stats.METRICS` (but the ``info``
ones), generated from that table. The summaries carry a count and a sum, no
quantiles (the pool keeps none).
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
        """A family per metric of :data:`pypool.stats.METRICS` (and one more
        for a summary's max), keyed by the statistic's key."""
        mc = self._mc
        families: dict[str, Metric] = {}
        for metric in stats.METRICS:
            if metric.kind == "info":
                continue
            name = f"{self.namespace}_{metric.prometheus}"
            labels = ["pool", metric.label] if metric.label else ["pool"]
            doc = metric.description[:1].upper() + metric.description[1:] + "."
            if metric.kind == "summary":
                families[metric.key] = mc.SummaryMetricFamily(name, doc, labels=labels)
                if "max" in metric.fields:
                    families[metric.key + ".max"] = mc.GaugeMetricFamily(
                        f"{name}_max", f"{doc} The longest since the pool was made.", labels=labels
                    )
            elif metric.kind == "counter":
                families[metric.key] = mc.CounterMetricFamily(name, doc, labels=labels)
            else:
                families[metric.key] = mc.GaugeMetricFamily(name, doc, labels=labels)
        return families

    @staticmethod
    def _add_samples(families: dict[str, Any], s: dict[str, Any]) -> None:
        name = str(s[stats.POOL_NAME])
        for metric in stats.METRICS:
            if metric.kind == "info":
                continue
            value = s[metric.key]
            family = families[metric.key]
            if metric.kind == "summary":
                family.add_metric([name], count_value=value["count"], sum_value=value["sum"])
                if "max" in metric.fields:
                    families[metric.key + ".max"].add_metric([name], value["max"])
            elif metric.label:
                for key, n in sorted(value.items()):
                    family.add_metric([name, key], n)
            else:
                family.add_metric([name], value)


def _exposed() -> str:
    rows = [("metric", "type", "from ``pool.stats()``")]
    for metric in stats.METRICS:
        if metric.kind == "info":
            continue
        suffix = "_total" if metric.kind == "counter" else ""
        label = f"{{{metric.label}}}" if metric.label else ""
        rows.append(
            (f"``pypool_{metric.prometheus}{suffix}{label}``", metric.kind, f"``{metric.key}``")
        )
        if "max" in metric.fields:
            rows.append((f"``pypool_{metric.prometheus}_max``", "gauge", "its ``max``"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=True)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows[1:]]
    lines.append(rule)
    return "\n".join(line.rstrip() for line in lines)


__doc__ = (__doc__ or "").replace("{metrics}", _exposed())
