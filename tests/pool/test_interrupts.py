"""Every path from the core's hand-out to the caller delivers the connection
or gives it back, whatever is raised on it: ``KeyboardInterrupt`` from the
check before hand-out, from the checkout hook (a listener, the leak report's
stack capture), from the return hook, from ``run()``'s decision and backoff,
on ``Pool`` and ``AsyncPool``, both cores, by way of ``acquire()``,
``connection()`` and ``run()``.

The interruptions here are injected where they are wanted (hooks that
raise), so each scenario is exact; ``test_sigint_storm.py`` sends real
signals. After each, every connection is accounted for
(``_support.interrupts.accounted``): idle in the pool, held, or closed.
"""

from __future__ import annotations

import asyncio
import gc
import time
import types
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

import pypool.pool.shared
import pypool.pool.threaded
from _support.interrupts import Adapter, AsyncConn, Conn, Factory, Trap, accounted
from pypool import AsyncPool
from pypool import stats as names

#: The ways a caller borrows from a Pool.
BORROWS = ["acquire", "connection"]


def borrow(pool: Any, how: str, timeout: float = 5.0) -> Any:
    """Borrows a connection the way ``how`` says and gives it back; returns it."""
    if how == "acquire":
        conn = pool.acquire(timeout)
        pool.release(conn)
        return conn
    with pool.connection(timeout) as conn:
        return conn


@pytest.fixture
def make(make_pool: Callable[..., tuple[Any, Factory]]) -> Callable[..., tuple[Any, Factory]]:
    """``make(**kw) -> (pool, factory)``: ``make_pool`` with this module's
    adapter and two connections unless ``kw`` says otherwise."""

    def make(**kw: Any) -> tuple[Any, Factory]:
        kw.setdefault("adapter", Adapter())
        kw.setdefault("max_size", 2)
        return make_pool(Factory(), **kw)  # type: ignore[no-any-return]

    return make


def warm(pool: Any, n: int) -> None:
    """Makes ``n`` connections idle, by borrowing them together."""
    held = [pool.acquire(5.0) for _ in range(n)]
    for conn in held:
        pool.release(conn)


# ------------------------------------------------------------- the check


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", BORROWS)
def test_interrupted_check_discards_the_connection(make: Any, how: str) -> None:
    """A check interrupted mid-way leaves the connection's state unknown:
    it is discarded and closed, never handed out nor pooled."""
    check = Trap()
    pool, factory = make(check=check, check_after=0.0)
    warm(pool, 1)
    (first,) = factory.made
    check.armed = True
    with pytest.raises(KeyboardInterrupt):
        borrow(pool, how)
    assert check.sprung == 1
    assert first.closed
    accounted(pool, factory.made)
    assert pool.stats()[names.RETIRED] == {"discarded": 1}  # not a failed check
    check.armed = False
    again = borrow(pool, how)
    assert again is not first
    accounted(pool, factory.made)


@pytest.mark.timeout(30)
def test_interrupted_check_after_a_wait_discards_the_connection(make: Any) -> None:
    """The same on the slow path: a connection that reached a waiting caller."""
    check = Trap()
    pool, factory = make(check=check, check_after=0.0, max_size=1)
    warm(pool, 1)
    held = pool.acquire(5.0)
    check.armed = True
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            pool.acquire(5.0)
        except BaseException as exc:
            errors.append(exc)

    import threading

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 5.0
    while pool.waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    pool.release(held)
    thread.join(5.0)
    assert len(errors) == 1 and isinstance(errors[0], KeyboardInterrupt), errors
    assert held.closed
    accounted(pool, factory.made)


# ---------------------------------------------------------- the checkout


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", BORROWS)
def test_interrupted_checkout_listener_gives_the_connection_back(make: Any, how: str) -> None:
    """A checkout listener interrupted: the connection goes back to the pool
    untouched (nobody used it), and is handed out again."""
    listener = Trap()
    pool, factory = make(check=False)
    warm(pool, 1)
    pool.add_listener("checkout", listener)
    listener.armed = True
    with pytest.raises(KeyboardInterrupt):
        borrow(pool, how)
    (conn,) = factory.made
    assert not conn.closed and conn.resets == 1  # the warm-up's reset only
    accounted(pool, factory.made)
    listener.armed = False
    assert borrow(pool, how) is conn


@pytest.mark.timeout(30)
def test_interrupted_checkout_after_a_connect_gives_it_back(make: Any) -> None:
    """The slow path: a caller that waited for a new connection."""
    listener = Trap()
    pool, factory = make(check=False)
    pool.add_listener("checkout", listener)
    listener.armed = True
    with pytest.raises(KeyboardInterrupt):
        pool.acquire(5.0)
    assert len(factory.made) == 1 and not factory.made[0].closed
    accounted(pool, factory.made)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", BORROWS)
def test_interrupted_stack_capture_gives_the_connection_back(
    make: Any, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``leak_timeout`` captures the borrower's stack at every hand-out: a
    Ctrl-C there gives the connection back too."""
    capture = Trap(then=pypool.pool.shared.caller_stack)
    monkeypatch.setattr(pypool.pool.shared, "caller_stack", capture)
    pool, factory = make(check=False, leak_timeout=60.0)
    warm(pool, 1)
    capture.armed = True
    with pytest.raises(KeyboardInterrupt):
        borrow(pool, how)
    accounted(pool, factory.made)
    capture.armed = False
    assert borrow(pool, how) is factory.made[0]


# ------------------------------------------------------------- the return


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", BORROWS)
def test_interrupted_checkin_listener_discards_the_connection(make: Any, how: str) -> None:
    """A checkin listener interrupted before the reset: the connection is
    discarded (it would go back unreset otherwise), and the pool whole."""
    listener = Trap()
    pool, factory = make(check=False)
    pool.add_listener("checkin", listener)
    listener.armed = True
    with pytest.raises(KeyboardInterrupt):
        borrow(pool, how)
    (conn,) = factory.made
    assert conn.closed and conn.resets == 0
    accounted(pool, factory.made)
    listener.armed = False
    assert borrow(pool, how) is not conn


# ------------------------------------------------------------------ run()


@pytest.mark.timeout(30)
def test_run_interrupted_in_fn_gives_the_connection_back(make: Any) -> None:
    pool, factory = make(check=False)

    def fn(conn: Conn) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pool.run(fn)
    accounted(pool, factory.made)
    assert factory.made[0].resets == 1 and not factory.made[0].closed


@pytest.mark.timeout(30)
def test_run_interrupted_in_is_broken_gives_the_connection_back(make: Any) -> None:
    """``adapter.is_broken`` runs while ``run()`` holds the connection, in
    the handler of fn's exception: a Ctrl-C there gives it back."""
    adapter = Adapter()
    adapter.is_broken = Trap()  # type: ignore[method-assign]
    adapter.is_broken.armed = True
    pool, factory = make(adapter=adapter, check=False)

    def fn(conn: Conn) -> None:
        raise ConnectionError("lost")

    with pytest.raises(KeyboardInterrupt):
        pool.run(fn)
    accounted(pool, factory.made)


@pytest.mark.timeout(30)
def test_run_interrupted_in_its_backoff_has_discarded_the_broken_one(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, factory = make(check=False)
    sleeps = Trap()
    sleeps.armed = True
    monkeypatch.setattr(pypool.pool.threaded, "time", types.SimpleNamespace(**vars(time)))
    monkeypatch.setattr(pypool.pool.threaded.time, "sleep", sleeps)

    def fn(conn: Conn) -> None:
        conn.broken = True
        raise ConnectionError("lost")

    with pytest.raises(KeyboardInterrupt):
        pool.run(fn, retries=2, backoff=0.01)
    assert sleeps.sprung == 1
    (conn,) = factory.made
    assert conn.closed
    accounted(pool, factory.made)
    assert pool.stats()[names.RETIRED] == {"broken": 1}


@pytest.mark.timeout(30)
def test_run_retries_on_a_fresh_connection(make: Any) -> None:
    """What the lease in ``run()`` must keep: a broken connection is
    discarded and closed, the retry gets a new one, the result comes back."""
    pool, factory = make(check=False)
    seen: list[Conn] = []

    def fn(conn: Conn) -> str:
        seen.append(conn)
        if len(seen) < 3:
            conn.broken = True
            raise ConnectionError("lost")
        return "done"

    assert pool.run(fn, retries=2, backoff=0.001) == "done"
    assert len({id(c) for c in seen}) == 3
    assert seen[0].closed and seen[1].closed and not seen[2].closed
    accounted(pool, factory.made)
    assert pool.stats()[names.RETIRED] == {"broken": 2}


# --------------------------------------------------------------- AsyncPool


@pytest.fixture
def amake(core_module: ModuleType) -> Callable[..., tuple[Any, Factory]]:
    def make(**kw: Any) -> tuple[Any, Factory]:
        factory = Factory(AsyncConn)
        kw.setdefault("max_size", 2)
        return AsyncPool.with_core(core_module)(factory.connect, **kw), factory

    return make


async def awarm(pool: Any, n: int) -> None:
    held = [await pool.acquire(5) for _ in range(n)]
    for conn in held:
        await pool.release(conn)


async def aborrow(pool: Any, how: str) -> Any:
    if how == "acquire":
        conn = await pool.acquire(5)
        await pool.release(conn)
        return conn
    async with pool.connection(5) as conn:
        return conn


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", BORROWS)
@pytest.mark.parametrize("path", ["idle", "after-a-wait"])
def test_async_interrupted_checkout_listener_gives_the_connection_back(
    amake: Any, how: str, path: str
) -> None:
    """The fast path (an idle connection, the core's ``_take``) and the
    slow one (handed over after a wait) alike."""

    async def main() -> None:
        listener = Trap()
        pool, factory = amake(check=False)
        if path == "idle":
            await awarm(pool, 1)
        pool.add_listener("checkout", listener)
        listener.armed = True
        with pytest.raises(KeyboardInterrupt):
            await aborrow(pool, how)
        accounted(pool, factory.made)
        listener.armed = False
        assert await aborrow(pool, how) is factory.made[0]
        await pool.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", BORROWS)
def test_async_interrupted_check_discards_the_connection(amake: Any, how: str) -> None:
    """A check interrupted by ``KeyboardInterrupt`` stops the loop (asyncio
    lets it out of ``asyncio.run()``, from whichever task it is raised in);
    the connection under check is discarded, never pooled."""
    check = Trap()

    async def acheck(conn: Any) -> None:
        check()

    pool, factory = amake(check=acheck, check_after=0.0)

    async def main() -> None:
        await awarm(pool, 1)
        check.armed = True
        await aborrow(pool, how)

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
    gc.collect()  # the tasks the interrupt ended, now rather than in a later test
    assert check.sprung == 1
    accounted(pool, factory.made)
    assert pool.idle == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", BORROWS)
def test_async_interrupted_checkin_listener_discards_the_connection(amake: Any, how: str) -> None:
    async def main() -> None:
        listener = Trap()
        pool, factory = amake(check=False)
        pool.add_listener("checkin", listener)
        listener.armed = True
        with pytest.raises(KeyboardInterrupt):
            await aborrow(pool, how)
        await asyncio.sleep(0.05)
        assert factory.made[0].closed
        accounted(pool, factory.made)
        await pool.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_async_run_interrupted_in_is_broken_gives_the_connection_back(amake: Any) -> None:
    async def main() -> None:
        pool, factory = amake(check=False)
        is_broken = Trap()
        is_broken.armed = True
        pool._settings.adapter.is_broken = is_broken

        async def fn(conn: Any) -> None:
            raise ConnectionError("lost")

        with pytest.raises(KeyboardInterrupt):
            await pool.run(fn)
        accounted(pool, factory.made)
        await pool.close()

    asyncio.run(main())


# ----------------------------------------------------------- psycopg pools


@pytest.fixture
def pg(core_module: ModuleType, dsn: str) -> Iterator[Callable[..., tuple[Any, list[Any]]]]:
    """``pg(**kw) -> (pool, made)``: a ``pypool.psycopg.ConnectionPool`` on
    the core under test; ``made`` lists every connection it opened."""
    psycopg_pools = pytest.importorskip("pypool.psycopg")
    pools: list[Any] = []

    def make(**kw: Any) -> tuple[Any, list[Any]]:
        made: list[Any] = []
        kw.setdefault("min_size", 1)
        kw.setdefault("max_size", 2)
        pool = psycopg_pools.ConnectionPool.with_core(core_module)(
            dsn, open=True, configure=made.append, **kw
        )
        pools.append(pool)
        pool.wait(10.0)
        return pool, made

    yield make
    for pool in pools:
        pool.close()


def pg_borrow(pool: Any, how: str) -> Any:
    if how == "getconn":
        conn = pool.getconn(5.0)
        pool.putconn(conn)
        return conn
    with pool.connection(5.0) as conn:
        conn.execute("SELECT 1")
        return conn


PG_BORROWS = ["getconn", "connection"]


@pytest.mark.db
@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", PG_BORROWS)
def test_psycopg_interrupted_check_discards_the_connection(pg: Any, how: str) -> None:
    check = Trap(then=lambda conn: None)
    pool, made = pg(check=check, check_after=0.0)
    check.armed = True
    with pytest.raises(KeyboardInterrupt):
        pg_borrow(pool, how)
    assert made[0].closed
    accounted(pool, made)
    check.armed = False
    assert pg_borrow(pool, how) is not made[0]
    accounted(pool, made)


@pytest.mark.db
@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", PG_BORROWS)
def test_psycopg_interrupted_checkout_listener_gives_it_back(pg: Any, how: str) -> None:
    listener = Trap()
    pool, made = pg()
    pool.add_listener("checkout", listener)
    listener.armed = True
    with pytest.raises(KeyboardInterrupt):
        pg_borrow(pool, how)
    assert not made[0].closed
    accounted(pool, made)
    listener.armed = False
    assert pg_borrow(pool, how) is made[0]


@pytest.mark.db
@pytest.mark.timeout(60)
def test_psycopg_interrupted_commit_at_block_end_gives_it_back(pg: Any, dsn: str) -> None:
    """A Ctrl-C in the commit that ends a ``connection()`` block: the
    connection still goes back (rolled back by the reset), not lost."""
    psycopg = pytest.importorskip("psycopg")
    commit = Trap()

    class Interrupted(psycopg.Connection):  # type: ignore[type-arg]
        def commit(self) -> None:
            commit()
            super().commit()

    pool, made = pg(connection_class=Interrupted)
    commit.armed = True
    with pytest.raises(KeyboardInterrupt), pool.connection(5.0) as conn:
        conn.execute("SELECT 1")  # opens a transaction: the block's end commits
    assert commit.sprung == 1
    accounted(pool, made)
    commit.armed = False
    with pool.connection(5.0) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.db
@pytest.mark.timeout(60)
def test_psycopg_async_interrupted_checkout_listener_gives_it_back(
    core_module: ModuleType, dsn: str
) -> None:
    psycopg_pools = pytest.importorskip("pypool.psycopg")

    async def main() -> None:
        made: list[Any] = []

        async def configure(conn: Any) -> None:
            made.append(conn)

        listener = Trap()
        async with psycopg_pools.AsyncConnectionPool.with_core(core_module)(
            dsn, min_size=1, max_size=2, configure=configure, open=False
        ) as pool:
            await pool.wait(10.0)
            pool.add_listener("checkout", listener)
            listener.armed = True
            with pytest.raises(KeyboardInterrupt):
                async with pool.connection(5.0):
                    pass
            accounted(pool, made)
            listener.armed = False
            async with pool.connection(5.0) as conn:
                assert conn is made[0]

    asyncio.run(main())
