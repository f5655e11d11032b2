"""Chaos: recovery after each fault of the network (marker ``chaos``).

Pools reach PostgreSQL (and MariaDB, for a ``pypool.Pool`` over PyMySQL)
through a :class:`FaultProxy` each; load threads borrow
and query all along. Each scenario cuts the network one way for
:data:`OUTAGE` seconds, then lets it return, and measures how long after
that every load thread of a pool has been served again: that is the
pool's *recovery*. pypool's pools must recover within :data:`BOUND`
seconds (a connect held by a black hole ends at its connect timeout; a
failed connect is retried after at most 5 s of backoff). psycopg_pool runs
beside them, in the same run, through the same proxy; its figures are
reported, never asserted (and skipped if it is not installed).

The faults, in the proxy's words:

- ``accept_never_answer``: connections are reset, and new ones are accepted
  and never answered (a host that stopped behind a live middlebox);
- ``blackhole_existing``: every open connection goes silent, new ones pass;
- ``blackhole``: everything goes silent, open and new;
- ``refuse``: connections are reset and connects refused (the server down);
- ``reset_new``: connections are reset, and new ones reset on accept;
- ``reset_all``: every connection is reset once (a failover), new ones pass.

Native core.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from _support.chaos import (
    Timer,
    acquire_limit,
    native_core,
    psycopg_pool_or_none,
    record,
    with_core,
)
from _support.databases import mysql_params
from _support.faultproxy import FaultProxy

psycopg = pytest.importorskip("psycopg")

from pypool import Pool, dbapi  # noqa: E402
from pypool import psycopg as pypool_psycopg  # noqa: E402

pytestmark = [pytest.mark.chaos, pytest.mark.db, pytest.mark.native]

#: Seconds the network stays cut.
OUTAGE = 3.0
#: Seconds after the network returns within which pypool must have recovered.
BOUND = 12.0
#: How long a peer is given to recover before it is reported as not recovered.
PEER_WAIT = 12.0
THREADS = 3
SIZE = 3
#: Each borrow's timeout.
BORROW_TIMEOUT = 1.0


def _accept_never_answer(proxy: FaultProxy) -> None:
    proxy.blackhole_new()
    proxy.reset_all()


def _refuse(proxy: FaultProxy) -> None:
    proxy.refuse()
    proxy.reset_all()


def _reset_new(proxy: FaultProxy) -> None:
    proxy.reset_new()
    proxy.reset_all()


FAULTS: dict[str, Callable[[FaultProxy], None]] = {
    "accept_never_answer": _accept_never_answer,
    "blackhole_existing": FaultProxy.blackhole_existing,
    "blackhole": FaultProxy.blackhole,
    "refuse": _refuse,
    "reset_new": _reset_new,
    "reset_all": FaultProxy.reset_all,
}

#: Known gaps, as expected failures until they are closed: with connects
#: held unanswered, these pools do not recover within the bound.
KNOWN_GAPS = {}


def select_one(conn: Any) -> int:
    return int(conn.execute("SELECT 1").fetchone()[0])


class Subject:
    """One pool under load: ``THREADS`` threads borrowing and querying, each
    success time-stamped per thread."""

    def __init__(
        self,
        name: str,
        pool: Any,
        borrow: Callable[[], object],
        asserted: bool,
        acquire: Callable[[float], Any] | None = None,
        release: Callable[[Any], object] | None = None,
    ) -> None:
        self.name = name
        self.pool = pool
        self.borrow = borrow
        self.asserted = asserted
        self.stop = threading.Event()
        self.last_success = [0.0] * THREADS
        self.successes = 0
        self.failures = 0
        self.threads = [
            threading.Thread(target=self._work, args=(i,), name=f"{name}-{i}", daemon=True)
            for i in range(THREADS)
        ]
        #: Bare acquires, timed, by one more thread: each must return within
        #: its timeout + max(10 %, 100 ms), served or timed out.
        self.acquires = Timer(acquire_limit(BORROW_TIMEOUT))
        self.acquire_timeouts = 0
        if acquire is not None and release is not None:
            self.threads.append(
                threading.Thread(
                    target=self._acquire,
                    args=(acquire, release),
                    name=f"{name}-acquire",
                    daemon=True,
                )
            )

    def _acquire(self, acquire: Callable[[float], Any], release: Callable[[Any], object]) -> None:
        while not self.stop.is_set():
            try:
                conn = self.acquires.timed(lambda: acquire(BORROW_TIMEOUT))
            except Exception:
                self.acquire_timeouts += 1
                time.sleep(0.01)
            else:
                release(conn)
                time.sleep(0.005)

    def _work(self, i: int) -> None:
        while not self.stop.is_set():
            try:
                self.borrow()
            except Exception:
                self.failures += 1
                time.sleep(0.01)
            else:
                self.successes += 1
                self.last_success[i] = time.monotonic()
                time.sleep(0.005)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def recovered_after(self, since: float) -> bool:
        return min(self.last_success) > since

    def end(self) -> list[str]:
        self.stop.set()
        deadline = time.monotonic() + 40.0
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]


@pytest.fixture
def proxy(dsn: str, fault_proxy: Callable[..., FaultProxy]) -> FaultProxy:
    return fault_proxy(dsn)


@pytest.fixture
def mysql_proxy(fault_proxy: Callable[..., FaultProxy]) -> tuple[FaultProxy, dict[str, Any]]:
    """A proxy in front of MariaDB, and PyMySQL's arguments through it."""
    pytest.importorskip("pymysql")
    params = mysql_params()
    made = fault_proxy((params["host"], params["port"]))
    return made, {**params, "host": made.host, "port": made.port}


@pytest.fixture
def subjects(
    dsn: str, proxy: FaultProxy, mysql_proxy: tuple[FaultProxy, dict[str, Any]]
) -> Iterator[list[Subject]]:
    import pymysql

    core = native_core()
    target = proxy.dsn(dsn)
    made: list[Subject] = []

    def plain_pool(label: str, factory: Any, name: str, query: Callable[[Any], int]) -> Subject:
        # A pypool.Pool borrowed through run() (one retry), asserted.
        pool = with_core(Pool, core, factory, min_size=SIZE, max_size=SIZE, name=name)
        return Subject(
            label,
            pool,
            lambda: pool.run(query, retries=1, backoff=0.01, timeout=BORROW_TIMEOUT),
            asserted=True,
            acquire=pool.acquire,
            release=pool.release,
        )

    def my_select_one(conn: Any) -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return int(cur.fetchone()[0])

    made.append(
        plain_pool(
            "pypool.Pool (PyMySQL)",
            dbapi.connect_factory(pymysql.connect, **mysql_proxy[1]),
            "chaos-recovery-mysql",
            my_select_one,
        )
    )
    made.append(
        plain_pool(
            "pypool.Pool",
            dbapi.connect_factory(psycopg.connect, target),
            "chaos-recovery-pool",
            select_one,
        )
    )

    pg_pool = with_core(
        pypool_psycopg.ConnectionPool,
        core,
        target,
        min_size=SIZE,
        max_size=SIZE,
        open=True,
        name="chaos-recovery-psycopg",
    )

    def pg_borrow() -> None:
        with pg_pool.connection(BORROW_TIMEOUT) as conn:
            select_one(conn)

    made.append(
        Subject(
            "pypool.psycopg.ConnectionPool",
            pg_pool,
            pg_borrow,
            asserted=True,
            acquire=pg_pool.getconn,
            release=pg_pool.putconn,
        )
    )

    peer = psycopg_pool_or_none()
    if peer is not None:
        peer_pool = peer.ConnectionPool(
            target,
            min_size=SIZE,
            max_size=SIZE,
            open=True,
            check=peer.ConnectionPool.check_connection,
            name="chaos-recovery-peer",
        )

        def peer_borrow() -> None:
            with peer_pool.connection(timeout=BORROW_TIMEOUT) as conn:
                select_one(conn)

        made.append(
            Subject(
                "psycopg_pool.ConnectionPool",
                peer_pool,
                peer_borrow,
                asserted=False,
                acquire=peer_pool.getconn,
                release=peer_pool.putconn,
            )
        )

    yield made
    for subject in made:
        subject.stop.set()
    proxy.close()  # connects still held end now, rather than at their pool's close
    mysql_proxy[0].close()
    for subject in made:
        try:
            subject.pool.close(timeout=5.0)
        except TypeError:  # a close() without a timeout
            subject.pool.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_recovery_after_fault(
    fault: str,
    proxy: FaultProxy,
    mysql_proxy: tuple[FaultProxy, dict[str, Any]],
    subjects: list[Subject],
) -> None:
    for subject in subjects:
        subject.pool.wait(15.0)
        subject.start()
    time.sleep(0.5)
    for subject in subjects:
        assert subject.successes > 0, f"{subject.name} served nothing before the fault"

    FAULTS[fault](proxy)
    FAULTS[fault](mysql_proxy[0])
    cut = time.monotonic()
    time.sleep(OUTAGE)
    proxy.passthrough()
    mysql_proxy[0].passthrough()
    back = time.monotonic()

    recovered: dict[str, float | None] = {s.name: None for s in subjects}
    deadline = back + max(BOUND, PEER_WAIT) + 1.0
    while time.monotonic() < deadline and None in recovered.values():
        now = time.monotonic()
        for subject in subjects:
            if recovered[subject.name] is None and subject.recovered_after(back):
                recovered[subject.name] = now - back
        if all(recovered[s.name] is not None for s in subjects if s.asserted) and (
            now - back > PEER_WAIT
        ):
            break
        time.sleep(0.02)

    stuck = {s.name: s.end() for s in subjects}
    figures: dict[str, Any] = {"outage_s": round(back - cut, 2), "bound_s": BOUND}
    for subject in subjects:
        took = recovered[subject.name]
        figures[subject.name] = {
            "recovered_s": None if took is None else round(took, 2),
            "successes": subject.successes,
            "failures": subject.failures,
            "stuck_threads": len(stuck[subject.name]),
        }
        if subject.acquires.slowest:
            figures[subject.name].update(
                acquire_slowest_s=round(subject.acquires.slowest, 3),
                acquire_limit_s=subject.acquires.limit,
                acquires_late=len(subject.acquires.late),
                acquire_timeouts=subject.acquire_timeouts,
            )
    if psycopg_pool_or_none() is None:
        figures["psycopg_pool.ConnectionPool"] = "not installed"
    record(f"recovery-{fault}", figures)

    gaps: list[str] = []
    for subject in subjects:
        if not subject.asserted:
            continue
        took = recovered[subject.name]
        assert not stuck[subject.name], f"{subject.name}: threads stuck {stuck[subject.name]}"
        late = subject.acquires.late
        assert not late, f"{subject.name}: acquires past {subject.acquires.limit} s: {late[:5]}"
        if took is None and (subject.name, fault) in KNOWN_GAPS:
            gaps.append(KNOWN_GAPS[subject.name, fault])
            continue
        assert took is not None, f"{subject.name} did not recover within {PEER_WAIT} s"
        assert took <= BOUND, f"{subject.name} took {took:.1f} s to recover (bound {BOUND} s)"
    if gaps:
        pytest.xfail("; ".join(gaps))
