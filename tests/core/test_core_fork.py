"""After ``os.fork()`` the child's core starts empty and never finalizes the
parent's connections (they share the parent's sockets).

Each test runs a small script in a fresh interpreter, which forks there:
forking the pytest process itself would duplicate the test session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from _support.children import child_env

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the platform has no fork()")

_FORK_SCRIPT = r"""
import gc, importlib, json, os, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running
core = importlib.import_module(sys.argv[1])
marker = sys.argv[2]


class Conn:
    def __init__(self, name):
        self.name = name

    def __del__(self, _open=open, _getpid=os.getpid, _marker=marker):
        # Bound now: at interpreter shutdown the module globals may be gone.
        with _open(_marker, "a") as f:
            f.write(f"{self.name} {_getpid()}\n")


def gauges(pool):
    s = pool.stats()
    keys = ("size", "idle", "in_use", "connecting", "claimed", "waiting", "acquires", "waits")
    return {k: s[k] for k in keys}


handed = []
pool = core.CorePool(6)
for i in range(5):
    pool.fill(pool.reserve(), Conn(f"parent{i}"))
b0, b1, b2 = pool.try_acquire(), pool.try_acquire(), pool.try_acquire()
pool.try_acquire()  # borrowed and dropped at once: abandoned, slot recovered
claimed = pool.claim(0)  # a claimed one, taken aside
creating = pool.reserve()  # a connect in flight
ticket = pool.enqueue(handed.append)  # a waiting ticket
control = Conn("control")  # dropped in the child: proves the marker works
before = gauges(pool)
sys.stdout.flush()

pid = os.fork()
if pid == 0:
    out = {"who": "child", "after_fork": gauges(pool), "slots": pool.slots()}
    try:
        pool.release(b0)
        out["release_parent_conn"] = "accepted"
    except Exception as exc:
        out["release_parent_conn"] = type(exc).__name__
    slot = pool.reserve()
    mine = Conn("child0")
    pool.fill(slot, mine)
    out["reserved"] = slot
    got = pool.acquire(timeout=1)
    out["acquired_own"] = got is mine
    out["release_own"] = pool.release(got)
    out["after_use"] = gauges(pool)
    del b0, b1, b2, claimed, control, ticket, got
    gc.collect()
    print(json.dumps(out), flush=True)
    sys.exit(0)  # normal interpreter shutdown, finalizing what it can

_, status = os.waitpid(pid, 0)
out = {"who": "parent", "child_pid": pid, "child_status": status}
out["after_child"] = gauges(pool)
out["unchanged"] = gauges(pool) == before
out["release"] = pool.release(b0)
out["ticket_served"] = ticket.done and ticket.result() is b0 and len(handed) == 1
out["restore"] = pool.restore(0)
pool.fill(creating, Conn("parent5"))
out["final"] = gauges(pool)
print(json.dumps(out), flush=True)
"""


def _run(core_module: Any, tmp_path: Path, script: str) -> tuple[dict, dict, list[str]]:
    marker = tmp_path / "finalized.txt"
    marker.touch()
    proc = subprocess.run(
        [sys.executable, "-c", script, core_module.__name__, str(marker)],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    by_who = {d["who"]: d for d in lines}
    assert set(by_who) == {"child", "parent"}, proc.stdout + proc.stderr
    return by_who["child"], by_who["parent"], marker.read_text().splitlines()


@pytest.mark.timeout(90)
def test_fork_child_starts_empty(core_module: Any, tmp_path: Path) -> None:
    child, parent, finalized = _run(core_module, tmp_path, _FORK_SCRIPT)
    empty = {k: 0 for k in ("size", "idle", "in_use", "connecting", "claimed", "waiting")}
    assert child["after_fork"] == {**empty, "acquires": 0, "waits": 0}
    assert child["slots"] == []
    assert child["release_parent_conn"] == "NotBorrowed"
    assert child["reserved"] == 0
    assert child["acquired_own"] is True
    assert child["release_own"] is True
    assert child["after_use"] == {**empty, "size": 1, "idle": 1, "acquires": 1, "waits": 0}

    child_pid = str(parent["child_pid"])
    in_child = [line.split()[0] for line in finalized if line.split()[1] == child_pid]
    assert "control" in in_child  # the marker works in the child
    parent_conns_lost = [name for name in in_child if name.startswith("parent")]
    assert parent_conns_lost == [], "the child finalized the parent's connections"

    assert parent["child_status"] == 0
    assert parent["unchanged"] is True
    # 3 borrowed, 1 claimed, 1 connecting (in the slot of the abandoned one).
    assert parent["after_child"] == {
        "size": 5,
        "idle": 0,
        "in_use": 3,
        "connecting": 1,
        "claimed": 1,
        "waiting": 1,
        "acquires": 4,
        "waits": 0,
    }
    assert parent["release"] is True
    assert parent["ticket_served"] is True
    assert parent["restore"] is True
    assert parent["final"] == {
        "size": 5,
        "idle": 2,
        "in_use": 3,
        "connecting": 0,
        "claimed": 0,
        "waiting": 0,
        "acquires": 5,
        "waits": 1,
    }


_FORK_BUSY_SCRIPT = r"""
import importlib, json, os, sys, threading, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running
core = importlib.import_module(sys.argv[1])

pool = core.CorePool(2)
for _ in range(2):
    pool.fill(pool.reserve(), object())
stop = threading.Event()


def churn():
    while not stop.is_set():
        conn = pool.acquire(timeout=5)
        pool.release(conn)


threads = [threading.Thread(target=churn, daemon=True) for _ in range(3)]
for t in threads:
    t.start()
statuses = []
for _ in range(20):
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        # The mutex may have been held by a churning thread at the fork: the
        # child's core must start with fresh locks, not a copy of a held one.
        ok = pool.size == 0 and pool.waiting == 0
        slot = pool.reserve()
        pool.fill(slot, object())
        conn = pool.acquire(timeout=2)
        ok = ok and pool.release(conn) and pool.idle == 1
        os._exit(0 if ok else 3)
    statuses.append(os.waitpid(pid, 0)[1])
stop.set()
for t in threads:
    t.join(10)
s = pool.stats()
print(json.dumps({"who": "parent", "statuses": statuses, "idle": s["idle"], "size": s["size"]}))
print(json.dumps({"who": "child"}))
"""


@pytest.mark.timeout(120)
def test_fork_while_threads_use_the_pool(core_module: Any, tmp_path: Path) -> None:
    _, parent, _ = _run(core_module, tmp_path, _FORK_BUSY_SCRIPT)
    assert parent["statuses"] == [0] * 20
    assert (parent["idle"], parent["size"]) == (2, 2)


_FORK_TICKETS_SCRIPT = r"""
import importlib, json, os, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)
core = importlib.import_module(sys.argv[1])
from pypool.errors import PoolError

woken = []
pool = core.CorePool(2)
for _ in range(2):
    pool.fill(pool.reserve(), object())
a = pool.try_acquire()
handed = pool.enqueue(woken.append)  # served at once, result() not taken yet
queued = [pool.enqueue(woken.append) for _ in range(2)]
sys.stdout.flush()

pid = os.fork()
if pid == 0:
    out = {"who": "child", "waiting": pool.waiting}
    out["done"] = [t.done for t in [handed, *queued]]
    out["cancel"] = [t.cancel() for t in [handed, *queued]]
    out["cancel_timed_out"] = queued[0].cancel(timed_out=True)
    try:
        handed.result()
        out["handed_result"] = "returned"
    except PoolError as exc:
        out["handed_result"] = type(exc).__name__
    out["after_cancel"] = {"waiting": pool.waiting, "timeouts": pool.stats()["timeouts"]}
    # The child's own waiter is served by the child's own connection.
    mine = pool.enqueue(woken.append)
    conn = object()
    pool.fill(pool.reserve(), conn)
    out["own_served"] = mine.done and mine.result() is conn
    out["final"] = {"waiting": pool.waiting, "in_use": pool.in_use, "size": pool.size}
    print(json.dumps(out), flush=True)
    os._exit(0)

_, status = os.waitpid(pid, 0)
out = {"who": "parent", "status": status, "waiting": pool.waiting}
pool.release(a)
out["served_in_order"] = [t.done for t in queued] == [True, False] and handed.result() is not None
out["final"] = {"waiting": pool.waiting, "in_use": pool.in_use, "idle": pool.idle}
print(json.dumps(out), flush=True)
"""


@pytest.mark.timeout(90)
def test_fork_with_tickets_queued(core_module: Any, tmp_path: Path) -> None:
    # Tickets queued (or handed) in the parent are done in the child: cancel()
    # there is harmless and returns False, result() raises, and the child's
    # queue is its own, so its own waiter gets its own connection.
    child, parent, _ = _run(core_module, tmp_path, _FORK_TICKETS_SCRIPT)
    assert child["waiting"] == 0
    assert child["done"] == [True, True, True]
    assert child["cancel"] == [False, False, False]
    assert child["cancel_timed_out"] is False
    assert child["handed_result"] == "PoolError"
    assert child["after_cancel"] == {"waiting": 0, "timeouts": 0}
    assert child["own_served"] is True
    assert child["final"] == {"waiting": 0, "in_use": 1, "size": 1}
    assert parent["status"] == 0
    assert parent["waiting"] == 2
    assert parent["served_in_order"] is True
    assert parent["final"] == {"waiting": 1, "in_use": 2, "idle": 0}


_FORK_WAITERS_SCRIPT = r"""
import importlib, json, os, sys, threading, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running
core = importlib.import_module(sys.argv[1])

pool = core.CorePool(2)
pool.fill(pool.reserve(), object())
a = pool.try_acquire()
got = []
waiter = threading.Thread(target=lambda: got.append(pool.acquire(timeout=30)), daemon=True)
waiter.start()
while pool.waiting < 1:
    time.sleep(0.001)
ticket = pool.enqueue(lambda t: None)
sys.stdout.flush()

pid = os.fork()
if pid == 0:
    ok = pool.waiting == 0 and pool.size == 0 and ticket.done and not ticket.cancel()
    # The child's own waiting thread is served by the child's own connection.
    mine = []
    t = threading.Thread(target=lambda: mine.append(pool.acquire(timeout=10)), daemon=True)
    t.start()
    while pool.waiting < 1 and t.is_alive():
        time.sleep(0.001)
    conn = object()
    pool.fill(pool.reserve(), conn)
    t.join(10)
    ok = ok and mine == [conn] and pool.waiting == 0
    print(json.dumps({"who": "child", "ok": ok, "waiting": pool.waiting}), flush=True)
    os._exit(0)

_, status = os.waitpid(pid, 0)
waiting_after_child = pool.waiting
pool.release(a)  # to the parent's thread, first in line
waiter.join(10)
pool.release(got[0])  # to the parent's ticket
print(json.dumps({
    "who": "parent", "status": status, "waiting_after_child": waiting_after_child,
    "thread_served": got == [a], "ticket_served": ticket.done and ticket.result() is a,
    "waiting": pool.waiting,
}), flush=True)
"""


@pytest.mark.timeout(90)
def test_fork_with_a_thread_and_a_ticket_waiting(core_module: Any, tmp_path: Path) -> None:
    child, parent, _ = _run(core_module, tmp_path, _FORK_WAITERS_SCRIPT)
    assert child == {"who": "child", "ok": True, "waiting": 0}
    assert parent["status"] == 0
    assert parent["waiting_after_child"] == 2
    assert parent["thread_served"] is True
    assert parent["ticket_served"] is True
    assert parent["waiting"] == 0
