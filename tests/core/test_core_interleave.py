"""Every named call-out point of the cores' slow paths against every kind of
interference, enumerated, not sampled.

The cores run a test hook at each point where an operation may run Python
code it does not own (``_CALL_OUT_POINTS``, the same names in both). For
each (point, action) pair, every scenario that reaches the point is played
with the action armed there (``tests/_support/protocol.py``): a release, a
garbage collection whose finalizer releases or resurrects, an abandoned or
resurrected borrowed connection, an ``Exception``, a ``KeyboardInterrupt``,
a ``close()``; and, in a child interpreter, a fork. After each, the
invariants must hold: no hang, no timeout while a connection was idle,
counts balanced, nobody left waiting, every connection accounted for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest

from _support import protocol
from _support.children import child_env
from _support.interleave import points


@pytest.fixture(scope="module")
def reached(core_module: ModuleType) -> dict[str, list[str]]:
    """point -> the scenarios that reach it (a dry run of each)."""
    by_point: dict[str, list[str]] = {p: [] for p in points(core_module)}
    for name in protocol.SCENARIOS:
        result = protocol.run(core_module, name)
        assert protocol.check(result) == [], (name, protocol.check(result))
        for p in result.points:
            by_point[p].append(name)
    return by_point


def test_every_point_is_reached(reached: dict[str, list[str]]) -> None:
    assert {p: s for p, s in reached.items() if not s} == {}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("action", list(protocol.ACTIONS))
def test_every_point_against(
    core_module: ModuleType, reached: dict[str, list[str]], action: str
) -> None:
    failures: list[str] = []
    fired = 0
    for point, scenarios in reached.items():
        for scenario in scenarios:
            result = protocol.run(core_module, scenario, point, action)
            fired += result.fired
            failures += [f"{scenario} / {point} / {action}: {p}" for p in protocol.check(result)]
    assert failures == []
    assert fired > 0


_FORK_CHILD = r"""
import importlib, json, sys
sys.path.insert(0, sys.argv[2])
from _support import protocol
from _support.interleave import points
core = importlib.import_module(sys.argv[1])
failures, runs = [], 0
for name in protocol.SCENARIOS:
    dry = protocol.run(core, name)
    for point in sorted(dry.points):
        result = protocol.run(core, name, point, protocol.act_fork)
        runs += 1
        failures += [f"{name} / {point}: {p}" for p in protocol.check(result)]
        if result.fired and not result.forks:
            failures.append(f"{name} / {point}: no fork happened")
print(json.dumps({"runs": runs, "failures": failures}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the platform has no fork()")
@pytest.mark.timeout(600)
def test_every_point_against_a_fork(core_module: ModuleType) -> None:
    # Forking the test process itself would duplicate the test run: a child
    # interpreter plays the scenarios and forks at each point.
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore::DeprecationWarning",
            "-c",
            _FORK_CHILD,
            core_module.__name__,
            tests_dir,
        ],
        capture_output=True,
        text=True,
        timeout=500,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    outcome: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["failures"] == []
    assert outcome["runs"] >= len(points(core_module))
