"""Waiting threads: contention, fairness, timeouts, close, Ctrl-C, hand-off races."""

from __future__ import annotations

import json
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from _support.children import child_env
from pypool.errors import PoolClosed, PoolTimeout


class Tracker:
    """Who holds which connection; a second holder is an error."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holders: dict[int, int] = {}
        self.errors: list[str] = []

    def take(self, conn: Any, me: int) -> None:
        with self.lock:
            other = self.holders.get(id(conn))
            if other is not None:
                self.errors.append(f"{conn!r} handed to {me} while {other} holds it")
            self.holders[id(conn)] = me

    def give(self, conn: Any, me: int) -> None:
        with self.lock:
            if self.holders.pop(id(conn), None) != me:
                self.errors.append(f"{conn!r} released by {me}, not its holder")


def run_threads(n: int, target: Any) -> None:
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread hangs"


@pytest.mark.stress
@pytest.mark.timeout(120)
def test_stress_no_double_use(make_core_pool: Any) -> None:
    n_threads, cycles = 16, 25_000
    waits: list[int] = []
    pool, conns = make_core_pool(4, on_wait=lambda: waits.append(1))
    tracker = Tracker()
    done = [0] * n_threads
    failures: list[BaseException] = []

    def worker(me: int) -> None:
        rnd = random.Random(me)
        try:
            while done[me] < cycles:
                if rnd.random() < 0.3:
                    conn = pool.try_acquire()
                    if conn is None:
                        continue
                else:
                    conn = pool.acquire(timeout=30)
                tracker.take(conn, me)
                if rnd.random() < 0.01:
                    time.sleep(0)
                tracker.give(conn, me)
                assert pool.release(conn) is True
                done[me] += 1
        except BaseException as exc:
            failures.append(exc)

    t0 = time.perf_counter()
    run_threads(n_threads, worker)
    elapsed = time.perf_counter() - t0
    print(f"{sum(done)} cycles in {elapsed:.2f} s, {len(waits)} waits")
    assert failures == []
    assert tracker.errors == []
    stats = pool.stats()
    assert (stats["idle"], stats["in_use"], stats["waiting"], stats["size"]) == (4, 0, 0, 4)
    assert stats["acquires"] == n_threads * cycles
    assert stats["timeouts"] == 0
    assert stats["waits"] <= len(waits)
    assert sorted(map(id, pool.close())) == sorted(map(id, conns))


@pytest.mark.stress
@pytest.mark.timeout(120)
def test_starvation_bounded(make_core_pool: Any) -> None:
    n_threads, duration = 16, 3.0
    pool, _conns = make_core_pool(4)
    tracker = Tracker()
    waited: list[list[float]] = [[] for _ in range(n_threads)]
    failures: list[BaseException] = []
    deadline = time.monotonic() + duration

    def worker(me: int) -> None:
        try:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                conn = pool.acquire(timeout=30)
                waited[me].append(time.perf_counter() - t0)
                tracker.take(conn, me)
                time.sleep(0.001)
                tracker.give(conn, me)
                pool.release(conn)
        except BaseException as exc:
            failures.append(exc)

    run_threads(n_threads, worker)
    assert failures == []
    assert tracker.errors == []
    every = [w for ws in waited for w in ws]
    mean, worst = statistics.fmean(every), max(every)
    per_thread = [len(ws) for ws in waited]
    print(
        f"{len(every)} acquires: mean wait {mean * 1e3:.2f} ms, max {worst * 1e3:.2f} ms "
        f"(ratio {worst / mean:.1f}); per thread min {min(per_thread)} max {max(per_thread)}"
    )
    assert min(per_thread) > 0
    assert worst <= 10 * mean, f"max wait {worst * 1e3:.1f} ms > 10 x mean {mean * 1e3:.2f} ms"
    assert (pool.idle, pool.in_use, pool.waiting) == (4, 0, 0)


@pytest.mark.timeout(30)
def test_timeout(make_core_pool: Any) -> None:
    waits: list[int] = []
    pool, (conn,) = make_core_pool(1, on_wait=lambda: waits.append(1))
    assert pool.try_acquire() is conn
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.acquire(timeout=0.1)
    elapsed = time.monotonic() - t0
    print(f"timed out after {elapsed:.3f} s: {info.value}")
    assert 0.1 <= elapsed < 1.1
    message = str(info.value)
    assert "size 1/1" in message
    assert "in use 1" in message
    assert waits == [1]
    stats = pool.stats()
    assert (stats["timeouts"], stats["waiting"], stats["waits"]) == (1, 0, 0)
    assert pool.release(conn) is True
    assert pool.acquire(timeout=0.1) is conn


@pytest.mark.timeout(30)
def test_timeout_zero_fails_at_once(make_core_pool: Any) -> None:
    waits: list[int] = []
    pool, (_conn,) = make_core_pool(1, on_wait=lambda: waits.append(1))
    pool.try_acquire()
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout):
        pool.acquire(timeout=0)
    assert time.monotonic() - t0 < 0.5
    assert waits == []  # never started waiting


@pytest.mark.timeout(30)
def test_waiter_gets_released_connection(make_core_pool: Any) -> None:
    started = threading.Event()
    pool, (conn,) = make_core_pool(1, on_wait=started.set)
    pool.try_acquire()
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(pool.acquire()))
    thread.start()
    assert started.wait(10)
    assert pool.waiting == 1
    pool.release(conn)
    thread.join(10)
    assert got == [conn]
    stats = pool.stats()
    assert (stats["waits"], stats["waiting"], stats["in_use"]) == (1, 0, 1)
    assert stats["wait_time"] >= 0.0


@pytest.mark.timeout(30)
def test_waiter_gets_new_connection_from_fill(CorePool: Any) -> None:
    started = threading.Event()
    pool = CorePool(1, on_wait=started.set)
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(pool.acquire(timeout=10)))
    thread.start()
    assert started.wait(10)
    conn = object()
    pool.fill(pool.reserve(), conn)
    thread.join(10)
    assert got == [conn]
    assert pool.in_use == 1


@pytest.mark.timeout(30)
def test_infinite_timeout_waits(make_core_pool: Any) -> None:
    started = threading.Event()
    pool, (conn,) = make_core_pool(1, on_wait=started.set)
    pool.try_acquire()
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(pool.acquire(float("inf"))))
    thread.start()
    assert started.wait(10)
    pool.release(conn)
    thread.join(10)
    assert got == [conn]


@pytest.mark.timeout(30)
def test_close_wakes_waiters(make_core_pool: Any) -> None:
    n = 8
    registered = threading.Semaphore(0)
    pool, (conn,) = make_core_pool(1, on_wait=registered.release)
    pool.try_acquire()
    results: list[tuple[str, float]] = []
    lock = threading.Lock()

    def waiter(i: int) -> None:
        try:
            pool.acquire(timeout=None if i % 2 else 20)
            outcome = "got a connection"
        except PoolClosed:
            outcome = "PoolClosed"
        except BaseException as exc:
            outcome = repr(exc)
        with lock:
            results.append((outcome, time.monotonic()))

    threads = [threading.Thread(target=waiter, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for _ in range(n):
        assert registered.acquire(timeout=10)
    assert pool.waiting == n
    closed_at = time.monotonic()
    assert pool.close() == []
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert [r for r, _ in results] == ["PoolClosed"] * n
    slowest = max(t for _, t in results) - closed_at
    print(f"all {n} waiters woke within {slowest * 1e3:.1f} ms")
    assert slowest < 2.0
    assert pool.waiting == 0
    assert pool.release(conn) is False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("handoff_after", [0, 0.005], ids=["handoff", "notify"])
def test_handoff_race_loses_nothing(make_core_pool: Any, handoff_after: float) -> None:
    # handoff_after=0: the release hands the connection to the waiter itself;
    # otherwise it goes idle and the waiter is woken to take it.
    started = threading.Event()
    pool, (conn,) = make_core_pool(1, on_wait=started.set, handoff_after=handoff_after)
    rnd = random.Random(1)
    outcomes = {"got": 0, "timeout": 0}
    for _ in range(300):
        held = pool.try_acquire()
        assert held is conn
        started.clear()
        result: list[Any] = []

        def waiter(result: list[Any]) -> None:
            try:
                result.append(pool.acquire(timeout=0.002))
            except PoolTimeout:
                result.append(None)

        thread = threading.Thread(target=waiter, args=(result,))
        thread.start()
        assert started.wait(10)
        time.sleep(rnd.uniform(0.0015, 0.0025))  # release around the waiter's deadline
        assert pool.release(held) is True
        thread.join(10)
        assert not thread.is_alive()
        if result == [conn]:
            outcomes["got"] += 1
            assert (pool.idle, pool.in_use) == (0, 1)
            pool.release(conn)
        else:
            assert result == [None]
            outcomes["timeout"] += 1
        assert (pool.idle, pool.in_use, pool.waiting, pool.size) == (1, 0, 0, 1)
    print(f"hand-off race: {outcomes}")
    assert pool.try_acquire() is conn
    assert pool.stats()["timeouts"] == outcomes["timeout"]


@pytest.mark.timeout(60)
def test_handoff_race_many_waiters(make_core_pool: Any) -> None:
    # Several waiters with short timeouts while connections come and go:
    # each connection ends up idle or with exactly one holder.
    pool, conns = make_core_pool(2, handoff_after=0.001)
    tracker = Tracker()
    stop = threading.Event()
    failures: list[BaseException] = []
    counts = {"got": 0, "timeout": 0}
    lock = threading.Lock()

    def waiter(me: int) -> None:
        rnd = random.Random(me)
        try:
            while not stop.is_set():
                try:
                    conn = pool.acquire(timeout=rnd.uniform(0.0005, 0.003))
                except PoolTimeout:
                    with lock:
                        counts["timeout"] += 1
                    continue
                tracker.take(conn, me)
                time.sleep(rnd.uniform(0.0005, 0.003))
                tracker.give(conn, me)
                pool.release(conn)
                with lock:
                    counts["got"] += 1
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=waiter, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(30)
    print(f"many waiters: {counts}")
    assert failures == []
    assert tracker.errors == []
    assert counts["got"] > 0
    assert (pool.idle, pool.in_use, pool.waiting, pool.size) == (2, 0, 0, 2)
    assert pool.stats()["timeouts"] == counts["timeout"]
    assert sorted(map(id, pool.close())) == sorted(map(id, conns))


# ------------------------------------------------------------------- Ctrl-C

_INTERRUPT_CHILD = r"""
import importlib, json, signal, sys, threading, time
core = importlib.import_module(sys.argv[1])
handled = []
if sys.argv[2] == "other-thread":
    # The signal reaches a thread that is not waiting: the waiting main
    # thread's sleep is not cut short by it, only Python's flag is set.
    threading.Thread(target=threading.Event().wait, daemon=True).start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def handler(signum, frame):
    handled.append(time.monotonic())
    raise KeyboardInterrupt


signal.signal(signal.SIGINT, handler)
pool = core.CorePool(1, on_wait=lambda: print("waiting", flush=True))
pool.fill(pool.reserve(), object())
conn = pool.try_acquire()
result = {}
try:
    pool.acquire()
    result["outcome"] = "acquired"
except KeyboardInterrupt:
    result["outcome"] = "KeyboardInterrupt"
    result["caught_at"] = time.monotonic()
    result["handled_at"] = handled[0]
result["waiting_after"] = pool.waiting
# The pool is intact: a release from another thread makes the connection idle.
t = threading.Thread(target=pool.release, args=(conn,))
t.start()
t.join()
result["idle"] = pool.idle
result["again"] = pool.acquire(timeout=1) is conn
print(json.dumps(result), flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child needs POSIX signals")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("delivered_to", ["waiter", "other-thread"])
def test_ctrl_c_interrupts_wait(core_module: Any, delivered_to: str) -> None:
    """A Ctrl-C ends a wait without a timeout within a slice, also when the
    signal lands while the waiter is not asleep (between slices) or on
    another thread: the wait checks for a pending signal every slice, as
    Python code between two bytecodes does."""
    child = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPT_CHILD, core_module.__name__, delivered_to],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "waiting", child.stderr.read() if child.stderr else line
        time.sleep(0.3)
        sent_at = time.monotonic()  # the same system-wide clock as the child's
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["outcome"] == "KeyboardInterrupt"
    delay = result["caught_at"] - sent_at
    print(
        f"SIGINT: handler ran after {(result['handled_at'] - sent_at) * 1e3:.1f} ms, "
        f"KeyboardInterrupt caught after {delay * 1e3:.1f} ms"
    )
    assert delay < 0.5
    assert result["waiting_after"] == 0
    assert result["idle"] == 1
    assert result["again"] is True
