"""Observability of pypool.Pool, on both cores: OpenTelemetry metrics
(``pypool.otel``), the Prometheus collector (``pypool.prometheus``) and
logging. Events (``add_listener``) are tested in tests/pool/test_events.py.

Fake connections serve most tests: a factory of objects that count what is
done to them, and an adapter over them. The OpenTelemetry and Prometheus
tests are skipped, with the reason, when their packages are missing.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from types import ModuleType
from typing import Any

import pytest

import pypool
from _support.fakes import Factory, FakeAdapter, FakeConn, FakeError
from _support.waiting import wait_until
from pypool import Pool, stats
from pypool.errors import PoolTimeout

# ------------------------------------------------------------------ fakes


def known_activity(pool: Any) -> Any:
    """min_size=2, max_size=2: three hand-outs, one timeout, one connection
    left borrowed (so the count has both states), which is returned."""
    assert pool.min_size == 2 and pool.max_size == 2
    pool.wait(5.0)
    first = pool.acquire()
    pool.release(first)
    a = pool.acquire()
    b = pool.acquire()
    with pytest.raises(PoolTimeout):
        pool.acquire(timeout=0.05)
    pool.release(a)
    return b  # stays borrowed


# ------------------------------------------------------------ OpenTelemetry


@pytest.fixture
def otel_reader() -> tuple[Any, Any]:
    """``(meter_provider, reader)``: an SDK provider read in memory."""
    pytest.importorskip("opentelemetry.metrics", reason="opentelemetry-api is not installed")
    sdk_metrics = pytest.importorskip(
        "opentelemetry.sdk.metrics", reason="opentelemetry-sdk is not installed"
    )
    export = pytest.importorskip("opentelemetry.sdk.metrics.export")
    reader = export.InMemoryMetricReader()
    provider = sdk_metrics.MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


def otel_points(reader: Any) -> dict[str, list[tuple[dict[str, Any], Any, Any]]]:
    """``{metric name: [(attributes, value, metric), ...]}`` of one collection."""
    points: dict[str, list[tuple[dict[str, Any], Any, Any]]] = {}
    data = reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data is not None else ():
        for scope_metrics in resource_metrics.scope_metrics:
            assert scope_metrics.scope.name == "pypool"
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    points.setdefault(metric.name, []).append(
                        (dict(point.attributes), point.value, metric)
                    )
    return points


def one(points: dict[str, list[Any]], name: str, pool_name: str, **attrs: str) -> Any:
    """The value of ``name`` for ``pool_name`` (and ``attrs``)."""
    want = {stats.POOL_NAME: pool_name, **attrs}
    found = [value for a, value, _ in points.get(name, []) if a == want]
    assert len(found) == 1, f"{name} {want}: {points.get(name)}"
    return found[0]


@pytest.mark.timeout(30)
def test_otel_values_match_stats(make_pool: Any, otel_reader: Any) -> None:
    from opentelemetry.sdk.metrics.export import Gauge, Sum

    import pypool.otel

    provider, reader = otel_reader
    pool, _ = make_pool(min_size=2, max_size=2, name="otel-pool")
    handle = pypool.otel.instrument(pool, provider)
    held = known_activity(pool)
    points = otel_points(reader)
    s = pool.stats()
    name = "otel-pool"

    states = {a["db.client.connection.state"] for a, _, _ in points[stats.COUNT]}
    assert states == {"idle", "used"}
    assert one(points, stats.COUNT, name, **{"db.client.connection.state": "idle"}) == 1
    assert one(points, stats.COUNT, name, **{"db.client.connection.state": "used"}) == 1
    assert s[stats.COUNT] == {"idle": 1, "used": 1}
    for key in (stats.MAX, stats.IDLE_MAX, stats.IDLE_MIN, stats.PENDING_REQUESTS):
        assert one(points, key, name) == s[key], key
    assert one(points, stats.MAX, name) == 2 and one(points, stats.IDLE_MIN, name) == 2
    assert one(points, stats.TIMEOUTS, name) == s[stats.TIMEOUTS] == 1
    for key in (stats.CREATE_TIME, stats.WAIT_TIME, stats.USE_TIME):
        assert one(points, key + ".count", name) == s[key]["count"], key
        assert one(points, key + ".sum", name) == pytest.approx(s[key]["sum"]), key
    assert one(points, stats.WAIT_TIME + ".max", name) == pytest.approx(s[stats.WAIT_TIME]["max"])
    assert one(points, stats.CREATE_TIME + ".count", name) == 2
    assert one(points, stats.WAIT_TIME + ".count", name) == 3
    assert one(points, stats.USE_TIME + ".count", name) == 2
    for key in (
        stats.CONNECTING,
        stats.REQUESTS,
        stats.REQUESTS_WAITED,
        stats.CREATED,
        stats.CLOSED,
        stats.LOST,
        stats.CONNECT_ERRORS,
        stats.LEAKS,
    ):
        assert one(points, key, name) == s[key], key
    assert one(points, stats.REQUESTS, name) == 3

    # Instrument kinds and units of the semantic conventions.
    def metric(key: str) -> Any:
        return points[key][0][2]

    for key in (stats.COUNT, stats.MAX, stats.IDLE_MAX, stats.IDLE_MIN, stats.PENDING_REQUESTS):
        assert isinstance(metric(key).data, Sum) and not metric(key).data.is_monotonic, key
    assert isinstance(metric(stats.TIMEOUTS).data, Sum)
    assert metric(stats.TIMEOUTS).data.is_monotonic
    assert metric(stats.COUNT).unit == "{connection}"
    assert metric(stats.PENDING_REQUESTS).unit == "{request}"
    assert metric(stats.TIMEOUTS).unit == "{timeout}"
    assert metric(stats.WAIT_TIME + ".sum").unit == "s"
    assert metric(stats.WAIT_TIME + ".sum").data.is_monotonic
    assert isinstance(metric(stats.WAIT_TIME + ".max").data, Gauge)

    # Retirements by reason, after a discard.
    pool.discard(held)
    points = otel_points(reader)
    assert one(points, stats.RETIRED, name, **{"pypool.connection.close_reason": "discarded"}) == 1
    assert one(points, stats.CLOSED, name) == 1
    assert one(points, stats.COUNT, name, **{"db.client.connection.state": "used"}) == 0

    handle.close()
    assert handle.closed
    assert "otel-pool" in repr(handle)
    points = otel_points(reader)
    assert all(a.get(stats.POOL_NAME) != name for pts in points.values() for a, _, _ in pts)
    handle.close()  # idempotent


@pytest.mark.timeout(30)
def test_otel_reads_stats_once_per_collection(make_pool: Any, otel_reader: Any) -> None:
    import pypool.otel

    provider, reader = otel_reader
    pool, _ = make_pool(min_size=1, name="once")
    pool.wait(5.0)
    calls = []
    real_stats = pool.stats

    def counting_stats() -> dict[str, Any]:
        calls.append(1)
        return real_stats()

    pool.stats = counting_stats
    with pypool.otel.instrument(pool, provider):
        for n in range(1, 4):
            points = otel_points(reader)
            assert len(calls) == n, "pool.stats() must be read once per collection"
            assert one(points, stats.REQUESTS, "once") == real_stats()[stats.REQUESTS]
            with pool.connection():
                pass
    otel_points(reader)
    assert len(calls) == 3, "a closed handle reads nothing"


@pytest.mark.timeout(30)
def test_otel_several_pools_on_one_provider(make_pool: Any, otel_reader: Any) -> None:
    import pypool.otel

    provider, reader = otel_reader
    a, _ = make_pool(min_size=1, max_size=3, name="pool-a")
    b, _ = make_pool(min_size=2, max_size=5, name="pool-b")
    a.wait(5.0)
    b.wait(5.0)
    ha = pypool.otel.instrument(a, provider)
    hb = pypool.otel.instrument(b, provider)
    points = otel_points(reader)
    assert one(points, stats.MAX, "pool-a") == 3
    assert one(points, stats.MAX, "pool-b") == 5
    assert one(points, stats.COUNT, "pool-b", **{"db.client.connection.state": "idle"}) == 2
    assert ha.pool is a and hb.pool is b
    ha.close()
    points = otel_points(reader)
    assert {x[0][stats.POOL_NAME] for x in points[stats.MAX]} == {"pool-b"}
    hb.close()


@pytest.mark.timeout(30)
def test_otel_forgets_a_collected_pool(core_module: ModuleType, otel_reader: Any) -> None:
    import pypool.otel

    provider, reader = otel_reader
    pool = Pool.with_core(core_module)(Factory(), adapter=FakeAdapter(), min_size=1, name="gone")
    pool.wait(5.0)
    handle = pypool.otel.instrument(pool, provider)
    assert one(otel_points(reader), stats.MAX, "gone") == 10
    pool.close()
    del pool
    gc.collect()
    assert handle.pool is None
    points = otel_points(reader)
    assert all(a.get(stats.POOL_NAME) != "gone" for pts in points.values() for a, _, _ in pts)


def test_otel_missing_package_says_what_to_install(
    make_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pypool.otel

    pool, _ = make_pool()
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r"pip install pypool\[opentelemetry\]"):
        pypool.otel.instrument(pool)


@pytest.mark.timeout(30)
def test_otel_global_provider_by_default(make_pool: Any) -> None:
    pytest.importorskip("opentelemetry.metrics", reason="opentelemetry-api is not installed")
    import pypool.otel

    pool, _ = make_pool(name="global")
    with pypool.otel.instrument(pool) as handle:  # whatever provider is global
        assert handle.pool is pool and not handle.closed
    assert handle.closed


def test_otel_rejects_what_is_not_a_pool() -> None:
    pytest.importorskip("opentelemetry.metrics", reason="opentelemetry-api is not installed")
    import pypool.otel

    with pytest.raises(TypeError, match="pypool pool"):
        pypool.otel.instrument(object())


# --------------------------------------------------------------- Prometheus


@pytest.fixture
def prom() -> ModuleType:
    return pytest.importorskip("prometheus_client", reason="prometheus_client is not installed")


def scrape(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from ``generate_latest``."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.mark.timeout(30)
def test_prometheus_values_and_labels(make_pool: Any, prom: ModuleType) -> None:
    from pypool.prometheus import PoolCollector

    pool, _ = make_pool(min_size=2, max_size=2, name="prom-pool")
    registry = prom.CollectorRegistry()
    registry.register(PoolCollector(pool))
    held = known_activity(pool)
    samples = scrape(registry)
    s = pool.stats()
    lab = (("pool", "prom-pool"),)

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"pool": "prom-pool", **labels}.items())))]

    assert value("pypool_connections", state="idle") == s[stats.COUNT]["idle"] == 1
    assert value("pypool_connections", state="used") == s[stats.COUNT]["used"] == 1
    assert value("pypool_connections_max") == 2
    assert value("pypool_connections_idle_max") == s[stats.IDLE_MAX]
    assert value("pypool_connections_idle_min") == 2
    assert value("pypool_pending_requests") == 0
    assert value("pypool_connections_connecting") == s[stats.CONNECTING]
    assert value("pypool_timeouts_total") == s[stats.TIMEOUTS] == 1
    assert value("pypool_requests_total") == s[stats.REQUESTS] == 3
    assert value("pypool_requests_waited_total") == s[stats.REQUESTS_WAITED]
    assert value("pypool_connections_created_total") == s[stats.CREATED] == 2
    assert value("pypool_connections_closed_total") == s[stats.CLOSED] == 0
    assert value("pypool_connections_lost_total") == 0
    assert value("pypool_connect_errors_total") == 0
    assert value("pypool_leaks_total") == 0
    assert value("pypool_wait_seconds_count") == s[stats.WAIT_TIME]["count"] == 3
    assert value("pypool_wait_seconds_sum") == pytest.approx(s[stats.WAIT_TIME]["sum"])
    assert value("pypool_wait_seconds_max") == pytest.approx(s[stats.WAIT_TIME]["max"])
    assert value("pypool_use_seconds_count") == s[stats.USE_TIME]["count"] == 2
    assert value("pypool_connection_create_seconds_count") == 2
    assert value("pypool_connection_create_seconds_sum") == pytest.approx(
        s[stats.CREATE_TIME]["sum"]
    )
    assert all(dict(labels)["pool"] == "prom-pool" for (_, labels) in samples if labels)
    assert ("pypool_connections_max", lab) in samples

    pool.discard(held)
    samples = scrape(registry)
    assert value("pypool_connections_retired_total", reason="discarded") == 1
    assert value("pypool_connections", state="used") == 0


@pytest.mark.timeout(30)
def test_prometheus_namespace_several_pools_and_registry_rules(
    make_pool: Any, prom: ModuleType, core_module: ModuleType
) -> None:
    import gc as _gc

    from pypool.prometheus import PoolCollector

    a, _ = make_pool(min_size=1, max_size=3, name="a")
    b, _ = make_pool(min_size=1, max_size=4, name="b")
    a.wait(5.0)
    b.wait(5.0)
    registry = prom.CollectorRegistry()
    collector = PoolCollector(a, namespace="app_db")
    registry.register(collector)
    collector.add(b)
    collector.add(b)  # once only
    assert collector.pools == [a, b]
    assert registry.get_sample_value("app_db_connections_max", {"pool": "a"}) == 3
    assert registry.get_sample_value("app_db_connections_max", {"pool": "b"}) == 4
    assert registry.get_sample_value("pypool_connections_max", {"pool": "a"}) is None
    # A second collector with the same names is refused by the registry.
    with pytest.raises(ValueError, match="Duplicated"):
        registry.register(PoolCollector(b, namespace="app_db"))
    collector.remove(a)
    assert registry.get_sample_value("app_db_connections_max", {"pool": "a"}) is None
    # Held weakly: a collected pool is no longer exposed.
    c = Pool.with_core(core_module)(Factory(), adapter=FakeAdapter(), name="c")
    collector.add(c)
    assert registry.get_sample_value("app_db_connections_max", {"pool": "c"}) == 10
    c.close()
    del c
    _gc.collect()
    assert registry.get_sample_value("app_db_connections_max", {"pool": "c"}) is None
    assert collector.pools == [b]
    with pytest.raises(ValueError):
        PoolCollector(a, namespace="no spaces")
    with pytest.raises(TypeError):
        PoolCollector(object())


def test_prometheus_missing_package_says_what_to_install(
    make_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pypool.prometheus import PoolCollector

    pool, _ = make_pool()
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"pip install pypool\[prometheus\]"):
        PoolCollector(pool)


# ------------------------------------------------------------------ logging


@pytest.mark.timeout(30)
def test_one_logger_and_lost_connection_is_a_warning(
    make_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pool, _ = make_pool(max_size=1, check_after=0.0)
    with pool.connection() as conn:
        pass
    conn.fail_check = True
    time.sleep(0.01)
    with pool.connection() as conn2:
        assert conn2 is not conn
    assert conn.closed
    pool.close()
    ours = [r for r in caplog.records if r.name.startswith("pypool")]
    assert ours, "the pool logs"
    assert {r.name for r in ours} == {"pypool"}, "one logger: pypool"
    lost = [r for r in ours if "discarded" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelno == logging.WARNING
    assert "server closed the connection" in lost[0].getMessage()
    assert pool.stats()[stats.LOST] == 1


SECRET = "Sup3r-s3cret_PW"


def leaky_connect(dsn: str) -> FakeConn:
    """A driver whose error message repeats the DSN, password and all."""
    raise FakeError(f'could not connect with "{dsn}": connection refused\nDETAIL: {dsn}')


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://app:{SECRET}@127.0.0.1:1/db",
        f"host=127.0.0.1 port=1 user=app password={SECRET} dbname=db",
        f"host=127.0.0.1 password='{SECRET} x' dbname=db",
    ],
    ids=["url", "keywords", "quoted"],
)
def test_password_never_logged(
    core_module: ModuleType, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    from pypool.dbapi import connect_factory

    caplog.set_level(logging.DEBUG)
    factory = connect_factory(leaky_connect, dsn)
    pool = Pool.with_core(core_module)(
        factory,
        adapter=FakeAdapter(),
        min_size=1,
        reconnect_timeout=0.1,
        reconnect_failed=lambda p: None,
    )
    try:
        with pytest.raises(pypool.ConnectionFailed) as info:
            pool.wait(timeout=3.0, fail_fast=True)  # open(wait=True) would close the pool
        with pytest.raises(PoolTimeout):
            pool.acquire(timeout=0.3)
        assert wait_until(lambda: pool.stats()[stats.CONNECT_ERRORS] >= 3)
        time.sleep(0.2)
    finally:
        pool.close()
    assert "connection failed" in caplog.text
    assert "***" in caplog.text, "the DSN was logged, masked"
    assert SECRET not in caplog.text
    assert SECRET not in repr(factory) and SECRET not in repr(pool)
    assert SECRET not in str(info.value)
    assert "Sup3r" not in caplog.text


@pytest.mark.db
@pytest.mark.timeout(30)
def test_password_never_logged_real_driver(
    core_module: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    psycopg = pytest.importorskip("psycopg")
    import socket

    from pypool.dbapi import connect_factory

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level(logging.DEBUG)
    dsn = f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/test"
    factory = connect_factory(psycopg.connect, dsn, connect_timeout=2)
    pool = Pool.with_core(core_module)(factory, min_size=1)
    try:
        with pytest.raises(pypool.ConnectionFailed) as info:
            pool.wait(timeout=5.0, fail_fast=True)
        assert isinstance(info.value.__cause__, psycopg.OperationalError)
    finally:
        pool.close()
    assert "connection failed" in caplog.text
    assert SECRET not in caplog.text
    assert SECRET not in repr(factory)
