"""No task or wait of the asyncio pools swallows its own cancellation, on
any supported Python.

On Python 3.10 and 3.11, ``asyncio.wait_for(aw, t)`` returns ``aw``'s result
instead of raising ``CancelledError`` when the cancellation arrives in the
same loop iteration as ``aw`` completes. A connect worker waiting for demand
that way, cancelled by ``asyncio.run()``'s shutdown just as a released
connection set its demand event, looped on, and ``asyncio.run()`` waited
for it forever. The first tests build that moment exactly (an event set and
a cancellation in one step) for each wait of the pool; the last one cancels
the main task of ``asyncio.run()`` at random moments, round after round,
in a child process that must end in time.

(On 3.12 and later ``wait_for`` no longer swallows a cancellation: there
the first tests pass either way; run this file on 3.10 and 3.11.)
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from _support.children import child_env
from _support.waiting import eventually
from pypool import AsyncPool


class Conn:
    def __init__(self) -> None:
        self.closed = False

    async def rollback(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


async def factory() -> Conn:
    await asyncio.sleep(0)
    return Conn()


@pytest.fixture
def make(core_module: ModuleType) -> Callable[..., AsyncPool]:
    def make(**kw: Any) -> AsyncPool:
        kw.setdefault("max_size", 2)
        return AsyncPool.with_core(core_module)(kw.pop("factory", factory), **kw)

    return make


async def ends_cancelled(task: asyncio.Task[Any], timeout: float = 5.0) -> bool:
    """True when ``task`` ended, cancelled, within ``timeout`` seconds."""
    await asyncio.wait([task], timeout=timeout)
    return task.done() and task.cancelled()


@pytest.mark.timeout(30)
def test_connect_worker_cancelled_as_demand_is_set_ends(make: Callable[..., AsyncPool]) -> None:
    async def main() -> None:
        pool = make()
        await pool.open()
        workers = [t for t in pool._tasks if "connect" in t.get_name()]
        await asyncio.sleep(0.05)  # they sleep now, waiting for demand
        assert workers and not any(t.done() for t in workers)
        pool._demand.set()  # the same step: demand, then the cancellation
        for task in workers:
            task.cancel()
        for task in workers:
            assert await ends_cancelled(task), f"{task} swallowed its cancellation"
        await pool.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_maintenance_cancelled_as_it_is_stopped_ends(make: Callable[..., AsyncPool]) -> None:
    async def main() -> None:
        pool = make()
        await pool.open()
        (maintenance,) = [t for t in pool._tasks if "maintenance" in t.get_name()]
        await asyncio.sleep(0.05)
        pool._stop.set()
        maintenance.cancel()
        assert await ends_cancelled(maintenance)
        await pool.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_wait_cancelled_as_the_pool_gets_ready_ends(make: Callable[..., AsyncPool]) -> None:
    gate: list[asyncio.Future[None]] = []

    async def slow() -> Conn:
        gate.append(asyncio.get_running_loop().create_future())
        await gate[-1]
        return Conn()

    async def main() -> None:
        pool = make(factory=slow, min_size=1)
        waiter = asyncio.ensure_future(pool.wait(timeout=10))
        assert await eventually(lambda: bool(gate))
        await asyncio.sleep(0.01)  # the waiter sleeps until told the pool is ready
        pool._tell_ready()  # the same step: told, then cancelled
        waiter.cancel()
        assert await ends_cancelled(waiter), "wait() swallowed its cancellation"
        gate[-1].set_result(None)
        await pool.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["acquire", "connection"])
def test_acquire_cancelled_as_its_check_ends_is_cancelled(
    make: Callable[..., AsyncPool], how: str
) -> None:
    """The check of an idle connection, inside a caller's acquire, ends in
    the step the caller is cancelled: the caller still ends cancelled (it
    neither gets the connection nor runs on), and the connection is not
    lost."""
    gates: list[asyncio.Future[None]] = []
    armed = False

    async def check(conn: Any) -> None:
        if armed:
            gates.append(asyncio.get_running_loop().create_future())
            await gates[-1]

    async def main() -> None:
        nonlocal armed
        pool = make(check=check, check_after=0.0, max_size=1)
        await pool.open()
        conn = await pool.acquire(timeout=5)
        await pool.release(conn)
        armed = True
        ran_on: list[bool] = []

        async def borrow() -> None:
            if how == "acquire":
                got = await pool.acquire(timeout=5)
                ran_on.append(True)
                await pool.release(got)
            else:
                async with pool.connection(timeout=5):
                    ran_on.append(True)

        caller = asyncio.ensure_future(borrow())
        assert await eventually(lambda: bool(gates))
        gates[-1].set_result(None)  # the same step: the check ends, the caller is cancelled
        caller.cancel()
        assert await ends_cancelled(caller), "the check swallowed the caller's cancellation"
        assert not ran_on
        assert await eventually(lambda: pool.in_use == 0)
        assert pool.idle + pool.in_use + pool._core.connecting == pool.size
        await pool.close()

    asyncio.run(main())


# ------------------------------------------------- asyncio.run(), cancelled

CHILD = """
import asyncio, importlib, random, sys, time

from pypool import AsyncPool

core = importlib.import_module(sys.argv[1])
rounds, seed = int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)


class Conn:
    async def rollback(self):
        await asyncio.sleep(0)

    async def ping(self):
        await asyncio.sleep(0)

    async def close(self):
        await asyncio.sleep(0)


async def factory():
    await asyncio.sleep(0)
    return Conn()


async def main():
    # More tasks than connections, a check at every hand-out: at any moment
    # some wait, some check, some return, and the workers connect.
    pool = AsyncPool.with_core(core)(factory, max_size=2, check_after=0.0, timeout=5)
    await pool.open()

    async def work():
        while True:
            async with pool.connection():
                await asyncio.sleep(0)

    asyncio.get_running_loop().call_later(
        rng.uniform(0, 0.02), asyncio.current_task().cancel  # Ctrl-C, as asyncio.run sees it
    )
    await asyncio.gather(*(work() for _ in range(rng.randint(2, 16))))


for n in range(rounds):
    started = time.monotonic()
    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass
    print(n, round(time.monotonic() - started, 3), flush=True)
print("done", flush=True)
"""


@pytest.mark.stress
@pytest.mark.timeout(180)
def test_asyncio_run_cancelled_at_random_never_hangs(
    core_module: ModuleType, tmp_path: Path
) -> None:
    """Round after round, ``asyncio.run()`` of a busy pool whose main task is
    cancelled at a random moment (as Ctrl-C does) must return, with every
    task of the pool ended, in a child process given a time limit."""
    script = tmp_path / "cancel_rounds.py"
    script.write_text(textwrap.dedent(CHILD))
    rounds = 300
    try:
        done = subprocess.run(
            [sys.executable, str(script), core_module.__name__, str(rounds), "12"],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=90,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        last = out.strip().splitlines()[-1:] or ["none"]
        pytest.fail(f"asyncio.run() hung after round {last[0].split()[0]} of {rounds}")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.split()
    assert lines[-1] == "done", done.stdout[-500:]
    times = [float(line.split()[1]) for line in done.stdout.strip().splitlines()[:-1]]
    print(f"\n{core_module.__name__}: {rounds} rounds, slowest {max(times):.3f} s")
