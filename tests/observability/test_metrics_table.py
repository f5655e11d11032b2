"""``pypool.stats.METRICS`` is the one description of the statistics: the
keys ``stats()`` returns, the OpenTelemetry instruments and the Prometheus
families are exactly its rows (tests/observability/test_observability.py checks their
values)."""

from __future__ import annotations

from types import ModuleType

import pytest

from _support.fakes import NullAdapter
from pypool import AsyncPool, Pool, stats


class Conn:
    def close(self) -> None:
        pass


KEYS = [m.key for m in stats.METRICS]
PUBLISHED = [m for m in stats.METRICS if m.kind != "info"]


def test_the_table_is_well_formed() -> None:
    assert len(set(KEYS)) == len(KEYS)
    for m in stats.METRICS:
        assert m.kind in ("gauge", "counter", "summary", "info"), m.key
        assert m.description, m.key
        assert bool(m.attribute) == bool(m.label), m.key
        assert (m.kind == "summary") == bool(m.fields), m.key
        assert (m.kind == "info") == (not m.prometheus and not m.unit), m.key
    names = [m.prometheus for m in PUBLISHED]
    assert len(set(names)) == len(names)
    # Every constant of the module is a row.
    constants = {
        v for k, v in vars(stats).items() if k.isupper() and isinstance(v, str) and "." in v
    }
    assert constants == set(KEYS)


@pytest.mark.parametrize("public", [Pool, AsyncPool], ids=["Pool", "AsyncPool"])
def test_stats_returns_the_table(public: type, core_module: ModuleType) -> None:
    pool = public.with_core(core_module)(Conn, adapter=NullAdapter())
    assert list(pool.stats()) == KEYS
    for m in stats.METRICS:
        value = pool.stats()[m.key]
        if m.kind == "summary":
            assert sorted(value) == sorted(m.fields), m.key
        elif m.attribute:
            assert isinstance(value, dict), m.key


def test_otel_publishes_the_table(core_module: ModuleType) -> None:
    pytest.importorskip("opentelemetry.metrics", reason="opentelemetry-api is not installed")
    sdk = pytest.importorskip("opentelemetry.sdk.metrics", reason="opentelemetry-sdk is absent")
    export = pytest.importorskip("opentelemetry.sdk.metrics.export")
    import pypool.otel

    reader = export.InMemoryMetricReader()
    provider = sdk.MeterProvider(metric_readers=[reader])
    try:
        with Pool.with_core(core_module)(Conn, adapter=NullAdapter(), name="t") as pool:
            with pool.connection():
                pass
            pool.drain()  # a retired connection: a point of the "by reason" metric
            with pypool.otel.instrument(pool, provider):
                data = reader.get_metrics_data()
    finally:
        provider.shutdown()
    units = {
        metric.name: metric.unit
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    expected = {}
    for m in PUBLISHED:
        if m.kind == "summary":
            expected.update({f"{m.key}.{f}": m.unit if f == "count" else "s" for f in m.fields})
        else:
            expected[m.key] = m.unit
    assert units == expected


def test_prometheus_exposes_the_table(core_module: ModuleType) -> None:
    pytest.importorskip("prometheus_client", reason="prometheus_client is not installed")
    from pypool.prometheus import PoolCollector

    with Pool.with_core(core_module)(Conn, adapter=NullAdapter(), name="t") as pool:
        families = {f.name: f.type for f in PoolCollector(pool, namespace="ns").collect()}
    expected = {}
    for m in PUBLISHED:
        expected[f"ns_{m.prometheus}"] = m.kind
        if "max" in m.fields:
            expected[f"ns_{m.prometheus}_max"] = "gauge"
    assert families == expected
