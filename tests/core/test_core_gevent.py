"""Under gevent monkey-patching a waiting greenlet must yield to the hub.

With a wait that blocks the OS thread, the one thread that runs every
greenlet would block while holding nothing the others could return: the
script below would hang (and the subprocess time out) instead of finishing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from _support.children import child_env

pytest.importorskip("gevent")

_GEVENT_SCRIPT = r"""
from gevent import monkey
monkey.patch_all()

import importlib, json, sys
import gevent

core = importlib.import_module(sys.argv[1])
pool = core.CorePool(2)
for _ in range(2):
    pool.fill(pool.reserve(), object())
holders = set()
errors = []
done = []


def work(i):
    for _ in range(3):
        conn = pool.acquire(timeout=20)
        if id(conn) in holders:
            errors.append(f"greenlet {i} got a connection in use")
        holders.add(id(conn))
        gevent.sleep(0.001)
        holders.discard(id(conn))
        pool.release(conn)
    done.append(i)


greenlets = [gevent.spawn(work, i) for i in range(50)]
gevent.joinall(greenlets, timeout=25)
print(json.dumps({
    "done": len(done),
    "errors": errors,
    "idle": pool.idle,
    "in_use": pool.in_use,
    "waiting": pool.waiting,
    "waits": pool.stats()["waits"],
    "failed": [repr(g.exception) for g in greenlets if g.exception is not None],
}))
"""


@pytest.mark.timeout(60)
def test_waits_yield_to_the_gevent_hub(core_module: Any) -> None:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _GEVENT_SCRIPT, core_module.__name__],
            capture_output=True,
            text=True,
            timeout=30,
            env=child_env(),
        )
    except subprocess.TimeoutExpired:
        pytest.fail("greenlets did not finish in 30 s: a wait blocked the OS thread")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["failed"] == []
    assert result["errors"] == []
    assert result["done"] == 50
    assert (result["idle"], result["in_use"], result["waiting"]) == (2, 0, 0)
    assert result["waits"] > 0  # greenlets really waited
