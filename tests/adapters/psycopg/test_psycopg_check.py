"""An explicit ``check=`` is the user's contract: the psycopg pools run it on
every hand-out, a new connection's included, as psycopg_pool does, and a
caller's timeout bounds it.

Every scenario runs on psycopg_pool and on pypool.psycopg (native and Python
cores), sync and async, and compares; the scenarios that mostly wait run all
implementations at once (``_support.psycopg_impls.run_all``), so each costs
the time of the longest. Where psycopg_pool cannot keep the caller's timeout
(a check on a black-holed network blocks), its figure is reported beside
pypool's, not asserted.

Needs PostgreSQL (``dsn`` fixture).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("psycopg_pool")

from _support.faultproxy import proxies  # noqa: E402
from _support.psycopg_impls import (  # noqa: E402
    IMPLS,
    MODES,
    Api,
    available_impls,
    combinations,
    core_of,
    describe,
    make_api,
    report,
    run_all,
    with_core,
)

pytestmark = pytest.mark.db

#: What a caller may take beyond its timeout (a loaded machine included).
MARGIN = 0.75


def _ids(impl: str) -> Any:
    marks = [pytest.mark.native] if impl == "pypool-native" else []
    return pytest.param(impl, id=impl, marks=marks)


@pytest.fixture(params=[_ids(i) for i in IMPLS])
def impl(request: pytest.FixtureRequest) -> str:
    core_of(request.param)  # skips cleanly where the native core is missing
    return request.param  # type: ignore[no-any-return]


def _pypool(label: str) -> bool:
    return label.startswith("pypool")


async def _backend_gone(dsn: str, pid: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]
            ).fetchone()
            if row is not None and row[0] == 0:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"backend {pid} still there")


@pytest.mark.parametrize("mode", MODES)
def test_terminated_backend_is_not_handed_out(dsn: str, impl: str, mode: str) -> None:
    """pg_terminate_backend() a moment after the connection was returned:
    the next borrower gets a live connection, and the check's find counts in
    connections_lost."""

    async def scenario() -> tuple[int, int, dict[str, int]]:
        api = make_api(impl, mode, "pool", conninfo=dsn, min_size=1, max_size=1, check="builtin")
        await api.open(wait=True)
        try:
            conn = await api.getconn()
            pid = (await api.fetch(conn, "SELECT pg_backend_pid()"))[0][0]
            await api.putconn(conn)
            await _backend_gone(dsn, pid)
            async with api.connection(timeout=5) as conn:
                new_pid = (await api.fetch(conn, "SELECT pg_backend_pid()"))[0][0]
            return pid, new_pid, api.stats()
        finally:
            await api.close()

    pid, new_pid, stats = asyncio.run(scenario())
    assert new_pid != pid
    assert stats.get("connections_lost", 0) == 1, stats


def _failing_check(mode: str) -> Any:
    if mode == "async":

        async def check(conn: Any) -> None:
            raise RuntimeError("the user's check says no")

        return check

    def check_sync(conn: Any) -> None:
        raise RuntimeError("the user's check says no")

    return check_sync


@pytest.mark.timeout(60)
def test_failing_check_times_out_even_on_new_connections(dsn: str) -> None:
    """A check that always raises runs on new connections too:
    ``connection(timeout=1)`` raises PoolTimeout after about 1 s, on every
    implementation, pool and null pool, sync and async."""
    jobs = {}
    for impl, mode, kind in combinations():

        async def job(impl: str = impl, mode: str = mode, kind: str = kind) -> Any:
            api = make_api(
                impl, mode, kind, conninfo=dsn, min_size=1, max_size=2,
                check=_failing_check(mode),
            )  # fmt: skip
            await api.open()
            try:
                start = time.monotonic()
                try:
                    async with api.connection(timeout=1.0):
                        return "got a connection"
                except api.mod.PoolTimeout:
                    return time.monotonic() - start
            finally:
                await api.close()

        jobs[f"{impl}/{mode}/{kind}"] = job
    outcomes = run_all(jobs, timeout=30)
    rows = describe(outcomes, lambda seconds: f"PoolTimeout after {seconds:.2f} s")
    text = report("connection(timeout=1) with a check that always raises:", rows)
    for o in outcomes.values():
        assert o.finished and o.error is None, text
        assert isinstance(o.result, float), text
        assert 0.9 <= o.result <= 1.0 + MARGIN, text


@pytest.mark.timeout(60)
def test_network_cut_keeps_the_callers_timeout(dsn: str) -> None:
    """The network cut (the proxy stops forwarding) just after a connection
    went back: ``connection(timeout=1)`` and ``getconn(timeout=2)`` with
    ``check=ConnectionPool.check_connection`` raise PoolTimeout within the
    caller's timeout; psycopg_pool's check blocks, and is reported."""
    with proxies() as make_proxy:
        jobs = {}
        for impl in available_impls():
            for mode in MODES:
                for how, timeout in (("connection", 1.0), ("getconn", 2.0)):
                    proxy = make_proxy(dsn)

                    async def job(
                        impl: str = impl,
                        mode: str = mode,
                        how: str = how,
                        timeout: float = timeout,
                        proxy: Any = proxy,
                    ) -> Any:
                        api = make_api(
                            impl, mode, "pool", conninfo=proxy.dsn(dsn), min_size=1,
                            max_size=1, check="builtin",
                        )  # fmt: skip
                        await api.open(wait=True)
                        try:
                            return await _cut_and_borrow(api, proxy, how, timeout)
                        finally:
                            await api.close(timeout=0.2)

                    jobs[f"{impl}/{mode}/{how}(timeout={timeout:g})"] = job
        outcomes = run_all(jobs, timeout=10.0, required=_pypool)
        rows = describe(
            outcomes,
            lambda seconds: f"PoolTimeout after {seconds:.2f} s",
            lambda elapsed: f"still blocked after {elapsed:.1f} s",
        )
        text = report("a check on a black-holed network:", rows)
    for label, o in outcomes.items():
        if not _pypool(label):
            continue
        timeout = 1.0 if "connection(" in label else 2.0
        assert o.finished and o.error is None, text
        assert isinstance(o.result, float), text
        assert o.result <= timeout + MARGIN, text


async def _cut_and_borrow(api: Api, proxy: Any, how: str, timeout: float) -> Any:
    async with api.connection() as conn:
        await api.fetch(conn, "SELECT 1")
    proxy.blackhole()
    start = time.monotonic()
    try:
        if how == "getconn":
            await api.getconn(timeout)
        else:
            async with api.connection(timeout):
                pass
    except api.mod.PoolTimeout:
        return time.monotonic() - start
    return "got a connection"


# ---------------------------------------------------------------- pypool.Pool


class _HeldCheckPool:
    """A ``pypool.Pool`` of one fake connection whose user check (one the
    adapter cannot bound) runs on every hand-out, sets ``started`` and holds
    the connection until ``release`` is set."""

    def __init__(self, core_module: Any) -> None:
        import threading

        import pypool

        self.release = threading.Event()
        self.started = threading.Event()
        self.closed: list[Any] = []
        closed = self.closed

        class Conn:
            def rollback(self) -> None:
                pass

            def close(self) -> None:
                closed.append(self)

        def check(conn: Any) -> None:
            self.started.set()
            self.release.wait(10)

        self.pool = with_core(
            pypool.Pool, core_module, Conn, min_size=1, max_size=1, check=check, check_after=0
        )

    def assert_closed_after_release(self) -> None:
        """Not closed while the check holds it; closed once, soon after."""
        assert self.closed == []  # the check still has it
        self.release.set()
        deadline = time.monotonic() + 5
        while not self.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.closed) == 1


def test_pool_user_check_without_driver_means_leaves_at_the_deadline(
    core_module: Any,
) -> None:
    """pypool.Pool with a user check the adapter cannot bound (no driver it
    knows): the caller leaves at its deadline with PoolTimeout while the
    check finishes in its own thread, and the connection is closed then."""
    import pypool

    held = _HeldCheckPool(core_module)
    pool = held.pool
    try:
        pool.wait(5)
        start = time.monotonic()
        with pytest.raises(pypool.PoolTimeout):
            pool.acquire(timeout=0.5)
        elapsed = time.monotonic() - start
        assert elapsed <= 0.5 + MARGIN
        held.assert_closed_after_release()
        assert pool.stats()["pypool.connections.retired"].get("check", 0) == 1
    finally:
        held.release.set()
        pool.close()


def test_pool_user_check_on_psycopg_is_bounded_by_its_socket(core_module: Any, dsn: str) -> None:
    """pypool.Pool over psycopg (``dbapi.connect_factory``) with a user
    check: on a black-holed network the check ends at the caller's
    deadline, its socket shut down, and the caller gets PoolTimeout."""
    import pypool
    from pypool.dbapi import connect_factory
    from pypool.psycopg import ConnectionPool

    with proxies() as make_proxy:
        proxy = make_proxy(dsn)
        pool = with_core(
            pypool.Pool, core_module,
            connect_factory(psycopg.connect, proxy.dsn(dsn), autocommit=True),
            min_size=1, max_size=1, check=ConnectionPool.check_connection, check_after=0,
        )  # fmt: skip
        try:
            pool.wait(5)
            with pool.connection() as conn:
                conn.execute("SELECT 1")
            proxy.blackhole()
            start = time.monotonic()
            with pytest.raises(pypool.PoolTimeout):
                pool.acquire(timeout=1.0)
            assert time.monotonic() - start <= 1.0 + MARGIN
        finally:
            pool.close(timeout=0.2)


# ------------------------------------------------- discard_all on a plain Pool


@pytest.mark.parametrize("reset_name", ["discard_all", "reset_session"])
def test_session_reset_on_plain_pool_rolls_back_first(
    core_module: Any, dsn: str, reset_name: str
) -> None:
    """``reset=pypool.psycopg.discard_all`` on a ``pypool.Pool`` whose
    connections are not in autocommit: after a statement (a transaction
    open) the connection is rolled back, reset and reused, not discarded."""
    import pypool
    import pypool.psycopg
    from pypool.dbapi import connect_factory

    pool = with_core(
        pypool.Pool, core_module, connect_factory(psycopg.connect, dsn),
        min_size=1, max_size=1, reset=getattr(pypool.psycopg, reset_name),
    )  # fmt: skip
    try:
        conn = pool.acquire()
        assert not conn.autocommit
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.execute("SET application_name = 'dirty'")
        conn.commit()
        conn.execute("SELECT 1")  # a transaction open again at the return
        pool.release(conn)
        with pool.connection() as conn:
            assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
            assert conn.execute("SHOW application_name").fetchone()[0] != "dirty"
        stats = pool.stats()
        assert stats["pypool.connections.retired"] == {}, stats
        assert stats["pypool.connections.created"] == 1, stats
    finally:
        pool.close()


def test_pool_user_check_interrupted_wait_closes_after_the_check(core_module: Any) -> None:
    """A Ctrl-C while the caller waits for a check running in its own
    thread: the caller gets KeyboardInterrupt at once, the connection is
    dropped and closed only once the check has ended."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("needs the main thread")
    held = _HeldCheckPool(core_module)
    pool = held.pool
    try:
        pool.wait(5)

        def interrupt() -> None:  # a Ctrl-C, to the main thread, in its wait
            if held.started.wait(5):
                time.sleep(0.05)
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            pool.acquire(timeout=5)
        held.assert_closed_after_release()
        assert pool.stats()["pypool.connections.retired"].get("discarded", 0) == 1
    finally:
        held.release.set()
        pool.close()
