"""Names of the statistics ``Pool.stats()`` returns.

Where OpenTelemetry's semantic conventions for database client connection
pools have a metric, pypool uses its name (``db.client.connection.*``); the
rest are pypool's own (``pypool.*``). Histograms of the conventions are given
as summaries: ``{"count": n, "sum": seconds, "max": seconds}``.

==========================================  =========================================
key                                         value
==========================================  =========================================
``db.client.connection.pool.name``          the pool's name
``db.client.connection.count``              ``{"idle": n, "used": n}``: open connections
                                            by state (``used``: borrowed)
``db.client.connection.max``                ``max_size``
``db.client.connection.idle.max``           the most idle connections allowed (``max_size``)
``db.client.connection.idle.min``           ``min_size``
``db.client.connection.pending_requests``   callers waiting for a connection now
``db.client.connection.timeouts``           acquires that timed out (counter)
``db.client.connection.create_time``        summary of successful connects
``db.client.connection.wait_time``          summary over every hand-out of the time
                                            spent waiting (``count`` = requests served)
``db.client.connection.use_time``           summary over every finished borrow of the
                                            time borrowed
``pypool.connections.connecting``           connects in flight now
``pypool.requests``                         connections handed out (counter)
``pypool.requests.waited``                  hand-outs that had to wait (counter)
``pypool.connections.created``              connections made (counter)
``pypool.connections.closed``               connections closed by the pool (counter)
``pypool.connections.lost``                 closed because a check or reset failed,
                                            or abandoned by their borrower (counter)
``pypool.connections.retired``              ``{reason: count}``: why connections were
                                            closed (``expired``, ``idle``, ``used_up``,
                                            ``stale``, ``shrunk``, ``check``,
                                            ``reset_failed``, ``closed``, ``drained``,
                                            ``abandoned``, ``broken``, ``discarded``)
``pypool.connect_errors``                   failed connects (counter)
``pypool.leaks``                            borrows reported past ``leak_timeout``
``pypool.core``                             ``"native"`` or ``"python"``
==========================================  =========================================

The counters only grow (from the pool's creation, or from a fork in a child
process); the gauges are read at the time of the call. Reading them takes the
core's counters as they stand, so they cost the hot path nothing.
"""

from __future__ import annotations

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
