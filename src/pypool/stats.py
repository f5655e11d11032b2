"""Names of the statistics ``Pool.stats()`` returns.

Where OpenTelemetry's semantic conventions for database client connection
pools have a metric, pypool uses its name (``db.client.connection.*``); the
rest are pypool's own (``pypool.*``). Histograms of the conventions are given
as summaries: ``{"count": n, "sum": seconds, "max": seconds}``.

The table below is generated from :data:`METRICS`, the one description of
every statistic, which :mod:`pypool.otel` and :mod:`pypool.prometheus`
iterate to publish them: adding a statistic is one line there (and the code
in ``stats()`` that computes it).

The counters only grow (from the pool's creation, or from a fork in a child
process); the gauges are read at the time of the call. Reading them takes the
core's counters as they stand, so they cost the hot path nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

POOL_NAME: Final = "db.client.connection.pool.name"
COUNT: Final = "db.client.connection.count"
MAX: Final = "db.client.connection.max"
IDLE_MAX: Final = "db.client.connection.idle.max"
IDLE_MIN: Final = "db.client.connection.idle.min"
PENDING_REQUESTS: Final = "db.client.connection.pending_requests"
TIMEOUTS: Final = "db.client.connection.timeouts"
CREATE_TIME: Final = "db.client.connection.create_time"
WAIT_TIME: Final = "db.client.connection.wait_time"
USE_TIME: Final = "db.client.connection.use_time"
CONNECTING: Final = "pypool.connections.connecting"
REQUESTS: Final = "pypool.requests"
REQUESTS_WAITED: Final = "pypool.requests.waited"
CREATED: Final = "pypool.connections.created"
CLOSED: Final = "pypool.connections.closed"
LOST: Final = "pypool.connections.lost"
RETIRED: Final = "pypool.connections.retired"
CONNECT_ERRORS: Final = "pypool.connect_errors"
LEAKS: Final = "pypool.leaks"
CORE: Final = "pypool.core"

#: Retirement reasons counted as lost connections.
LOST_REASONS: Final = frozenset({"check", "reset_failed", "abandoned", "broken"})


@dataclass(frozen=True)
class Metric:
    """One statistic of ``Pool.stats()``, and how it is published."""

    #: The key in ``stats()`` (OpenTelemetry's name where one fits).
    key: str
    #: ``"gauge"`` (a value that goes up and down), ``"counter"`` (it only
    #: grows), ``"summary"`` (``{"count", "sum"[, "max"]}``, seconds), or
    #: ``"info"`` (a text, not published as a metric).
    kind: str
    #: Its unit (UCUM, as OpenTelemetry writes it); for a summary, the unit
    #: of its count (its sum and max are seconds).
    unit: str
    #: What it counts or measures.
    description: str
    #: Its name under the Prometheus collector's namespace (``_total`` is
    #: added to counters, ``_count``/``_sum`` to summaries, and ``_max`` for a
    #: summary's max); empty for an ``info``.
    prometheus: str = ""
    #: For a value that is a dict (``{state: n}``, ``{reason: n}``): the
    #: OpenTelemetry attribute and the Prometheus label its keys go to.
    attribute: str = ""
    label: str = ""
    #: For a summary: its fields.
    fields: tuple[str, ...] = ()


#: Every statistic of ``Pool.stats()``, in order: one line each.
# fmt: off
METRICS: Final[tuple[Metric, ...]] = (
    Metric(POOL_NAME, "info", "", "the pool's name (an attribute or label of every metric)"),
    Metric(COUNT, "gauge", "{connection}", "open connections by state ({'idle': n, 'used': n}; used: borrowed)", "connections", "db.client.connection.state", "state"),  # noqa: E501
    Metric(MAX, "gauge", "{connection}", "the maximum number of open connections allowed (max_size)", "connections_max"),  # noqa: E501
    Metric(IDLE_MAX, "gauge", "{connection}", "the maximum number of idle open connections allowed (max_size)", "connections_idle_max"),  # noqa: E501
    Metric(IDLE_MIN, "gauge", "{connection}", "the minimum number of idle open connections allowed (min_size)", "connections_idle_min"),  # noqa: E501
    Metric(PENDING_REQUESTS, "gauge", "{request}", "callers waiting for a connection now", "pending_requests"),  # noqa: E501
    Metric(TIMEOUTS, "counter", "{timeout}", "acquires that timed out", "timeouts"),
    Metric(CREATE_TIME, "summary", "{connection}", "time spent creating connections, over every successful connect", "connection_create_seconds", fields=("count", "sum")),  # noqa: E501
    Metric(WAIT_TIME, "summary", "{request}", "time spent obtaining a connection, over every hand-out (count: requests served; max: since the pool was made)", "wait_seconds", fields=("count", "sum", "max")),  # noqa: E501
    Metric(USE_TIME, "summary", "{request}", "time connections were borrowed, over every return", "use_seconds", fields=("count", "sum")),  # noqa: E501
    Metric(CONNECTING, "gauge", "{connection}", "connects in flight now", "connections_connecting"),
    Metric(REQUESTS, "counter", "{request}", "connections handed out", "requests"),
    Metric(REQUESTS_WAITED, "counter", "{request}", "hand-outs that had to wait", "requests_waited"),  # noqa: E501
    Metric(CREATED, "counter", "{connection}", "connections made", "connections_created"),
    Metric(CLOSED, "counter", "{connection}", "connections closed by the pool", "connections_closed"),  # noqa: E501
    Metric(LOST, "counter", "{connection}", "connections closed because a check or reset failed, or abandoned by their borrower", "connections_lost"),  # noqa: E501
    Metric(RETIRED, "counter", "{connection}", "connections closed by the pool, by reason ({reason: n}: expired, idle, used_up, stale, shrunk, check, reset_failed, closed, drained, abandoned, broken, discarded)", "connections_retired", "pypool.connection.close_reason", "reason"),  # noqa: E501
    Metric(CONNECT_ERRORS, "counter", "{error}", "failed connects", "connect_errors"),
    Metric(LEAKS, "counter", "{connection}", "borrows reported as held longer than leak_timeout", "leaks"),  # noqa: E501
    Metric(CORE, "info", "", "the core that runs the pool: 'native' or 'python'"),
)
# fmt: on


def _table() -> str:
    rows = [("key", "kind", "unit", "description")]
    rows += [(f"``{m.key}``", m.kind, m.unit or "-", m.description) for m in METRICS]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=True)), rule]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows[1:]
    ]
    lines.append(rule)
    return "\n".join(lines)


__doc__ = f"{__doc__}\n{_table()}\n"
