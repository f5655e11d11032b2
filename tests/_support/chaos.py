"""Shared pieces of the chaos suite (``tests/chaos/test_chaos_*.py``, marker
``chaos``): core selection, the JSON report, the database helpers and the
checks every scenario makes.

Core selection happens in ONE place, :func:`with_core`: every pool a chaos
scenario makes goes through it.

The report: each scenario records its figures with :func:`record`, under its
own name; they are merged into the JSON file named by ``PYPOOL_CHAOS_REPORT``
(default ``.chaos-report.json`` at the repository's root, ignored by git),
which ``docs/reliability.md`` is written from.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "Timer",
    "backend_pids",
    "balanced",
    "native_core",
    "psycopg_pool_or_none",
    "record",
    "report_path",
    "with_core",
]

#: Where the report goes when ``PYPOOL_CHAOS_REPORT`` does not say.
DEFAULT_REPORT = Path(__file__).resolve().parents[2] / ".chaos-report.json"

_report_lock = threading.Lock()


# ------------------------------------------------------------------ cores


def native_core() -> ModuleType:
    """The native core; skips (or fails, when ``PYPOOL_EXPECT_CORE=native``)
    when it cannot be imported."""
    from _support.cores import import_native_core

    return import_native_core()


def with_core(pool_class: Any, core: ModuleType, *args: Any, **kwargs: Any) -> Any:
    """``pool_class(*args, **kwargs)`` on the core module ``core``: the one
    place the chaos suite selects a core. ``pool_class`` is a pypool pool
    (``Pool``, ``AsyncPool``, the psycopg pools) or pypool's SQLAlchemy
    ``QueuePool`` (then the bound class is returned, to give to
    ``create_engine(poolclass=...)``)."""
    if pool_class.__module__.startswith("pypool.sqlalchemy"):
        return pool_class.with_core(core)
    return pool_class.with_core(core)(*args, **kwargs)


# ----------------------------------------------------------------- report


def report_path() -> Path:
    return Path(os.environ.get("PYPOOL_CHAOS_REPORT") or DEFAULT_REPORT)


def record(scenario: str, figures: dict[str, Any]) -> None:
    """Merges ``figures`` under ``scenario`` into the report file (made if
    absent; a scenario run again replaces its previous figures)."""
    path = report_path()
    with _report_lock:
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        data.setdefault("scenarios", {})
        data["environment"] = {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        data["scenarios"][scenario] = figures
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
    print(f"\n{scenario}: {json.dumps(figures, sort_keys=True)}")


# ----------------------------------------------------------------- checks


def balanced(pool: Any) -> dict[str, int]:
    """Asserts that a ``pypool.Pool`` (or a psycopg pool) is at rest with its
    counts balanced: nothing borrowed or waiting, every open connection
    counted once, connections made minus closed equal to those open. Returns
    the counts."""
    from pypool import stats as names

    # Workers may still be replacing a connection: give them a moment.
    deadline = time.monotonic() + 10.0
    while True:
        core = pool._core
        stats = pool.stats()
        made, closed = stats[names.CREATED], stats[names.CLOSED]
        settled = core.connecting == 0 and core.claimed == 0 and made - closed == core.size
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert core.in_use == 0, f"{core.in_use} connection(s) still borrowed"
    assert core.waiting == 0, f"{core.waiting} caller(s) still waiting"
    assert core.idle + core.in_use + core.claimed + core.connecting == core.size, core.stats()
    assert made - closed == core.size, f"made {made} - closed {closed} != open {core.size}"
    count = stats[names.COUNT]
    assert count["idle"] + count["used"] == core.size, count
    return {"made": made, "closed": closed, "open": int(core.size)}


class Timer:
    """Times each call; ``late`` lists those past ``limit`` seconds."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.slowest = 0.0
        self.late: list[float] = []
        self._lock = threading.Lock()

    def timed(self, fn: Callable[[], Any]) -> Any:
        started = time.monotonic()
        try:
            return fn()
        finally:
            took = time.monotonic() - started
            with self._lock:
                self.slowest = max(self.slowest, took)
                if took > self.limit:
                    self.late.append(took)


def acquire_limit(timeout: float) -> float:
    """What an acquire may take: its timeout + max(10 %, 100 ms)."""
    return timeout + max(0.1 * timeout, 0.1)


# --------------------------------------------------------------- databases


def psycopg_pool_or_none() -> ModuleType | None:
    """``psycopg_pool``, or None when it is not installed (the peer's part
    of a scenario is then skipped, never pypool's)."""
    try:
        import psycopg_pool
    except ImportError:
        return None
    return psycopg_pool


def backend_pids(dsn: str, application_name: str) -> list[int]:
    """PostgreSQL backends with ``application_name``."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application_name,)
        ).fetchall()
    return [row[0] for row in rows]


class Killer:
    """A thread that kills one backend of ``pids()`` at random every
    ``interval`` seconds with ``kill(pid)`` until stopped; counts its kills."""

    def __init__(
        self,
        pids: Callable[[], list[int]],
        kill: Callable[[int], bool],
        interval: float,
        seed: int = 15,
    ) -> None:
        import random

        self.pids = pids
        self.kill = kill
        self.interval = interval
        self.random = random.Random(seed)
        self.kills = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-killer", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                pids = self.pids()
                if pids and self.kill(self.random.choice(pids)):
                    self.kills += 1
            except Exception as exc:  # the harness must not pass a failure for a pass
                self.errors.append(exc)
                return

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10.0)
        assert not self._thread.is_alive(), "the killer thread did not end"
        if self.errors:
            raise self.errors[0]


def run_threads(n: int, target: Callable[[int], None], join_timeout: float) -> list[str]:
    """Runs ``n`` threads of ``target(i)``; returns the names of those still
    alive after ``join_timeout`` seconds (stuck)."""
    threads = [
        threading.Thread(target=target, args=(i,), name=f"chaos-{i}", daemon=True) for i in range(n)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + join_timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t.is_alive()]


def seconds(default: float) -> float:
    """How long a scenario's load runs: ``PYPOOL_CHAOS_SECONDS`` or ``default``."""
    return float(os.environ.get("PYPOOL_CHAOS_SECONDS") or default)


# --------------------------------------------------------------- the page


def _cell(value: Any) -> str:
    if value is None:
        return "not within the wait"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _fault_table(
    scenarios: dict[str, Any], keys: list[str], pools: list[str], cell: Callable[[Any], str]
) -> list[str]:
    """A table of a row a recovery scenario (``keys``), a column a pool:
    ``cell(what the scenario says of the pool)``."""
    rows = ["| fault | " + " | ".join(pools) + " |", "|---|" + "---|" * len(pools)]
    for key in keys:
        f = scenarios[key]
        rows.append(f"| {key[9:]} | " + " | ".join(cell(f.get(pool)) for pool in pools) + " |")
    return rows


def markdown(data: dict[str, Any]) -> str:
    """The figures of a report as the markdown tables of
    ``docs/reliability.md`` (between its ``chaos-figures`` comments)."""
    scenarios: dict[str, Any] = data.get("scenarios", {})
    env = data.get("environment", {})
    out = [
        f"One run of `python -m pytest -m chaos`, {env.get('when', '?')}: Python "
        f"{env.get('python', '?')}, {env.get('cpus', '?')} CPUs ({env.get('machine', '?')}), "
        "PostgreSQL and MariaDB on the same machine, native core for the database scenarios.",
        "",
        "Backends killed under load (16 threads, 8 connections, one backend killed every "
        "200 ms; `run(fn, retries=3)`):",
        "",
        "| database | kills | requests/s | caller errors | slowest acquire | acquire bound "
        "| timeouts | made / closed / open |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(k for k in scenarios if k.startswith("kill-")):
        f = scenarios[key]
        name = key[5:].replace("-psycopg_pool", " (psycopg_pool, retries by hand)")
        counts = f"{f['made']} / {f['closed']} / {f['open']}" if "made" in f else "-"
        out.append(
            f"| {name} | {f['kills']} | {f['requests_per_second']} | {f['caller_errors']} "
            f"| {f['acquire_slowest_s']} s | {f['acquire_limit_s']} s | {f['timeouts']} "
            f"| {counts} |"
        )
    recovery = sorted(k for k in scenarios if k.startswith("recovery-"))
    if recovery:
        pools = [
            "pypool.Pool",
            "pypool.psycopg.ConnectionPool",
            "psycopg_pool.ConnectionPool",
            "pypool.Pool (PyMySQL)",
        ]
        first = scenarios[recovery[0]]
        out += [
            "",
            f"Recovery, in seconds after the network returns ({first['outage_s']:g} s "
            f"outage; pypool's bound {first['bound_s']:g} s):",
            "",
        ]

        def recovered(got: Any) -> str:
            return _cell(got["recovered_s"]) if isinstance(got, dict) else str(got or "-")

        def slowest(got: Any) -> str:
            seconds = got.get("acquire_slowest_s") if isinstance(got, dict) else None
            return "-" if seconds is None else f"{seconds:g}"

        out += _fault_table(scenarios, recovery, pools, recovered)
        out += [
            "",
            "Slowest bare acquire during the same runs, in seconds (timeout 1 s; bound "
            f"{_cell(first.get('pypool.Pool', {}).get('acquire_limit_s'))} s):",
            "",
        ]
        out += _fault_table(scenarios, recovery, pools, slowest)
    storms = sorted(k for k in scenarios if k.startswith(("storm-", "cancel-")))
    if storms:
        out += [
            "",
            "Interrupt storms (about 3 s each; every borrower checked for a query running):",
            "",
            "| way of borrowing | interrupts or cancellations | completed | connections made "
            "| recovered by the collector | left checked out |",
            "|---|---|---|---|---|---|",
        ]
        for key in storms:
            f = scenarios[key]
            hits = f.get("interrupts", f.get("cancellations"))
            left = f.get("left_checked_out", 0)
            peer = f.get("sqlalchemy.QueuePool")
            if isinstance(peer, dict):
                left = f"{left} (SQLAlchemy's own QueuePool: {peer.get('left_checked_out', '-')})"
            out.append(
                f"| {key} | {hits} | {f['completed']} | {f['connections_made']} "
                f"| {f.get('recovered_by_collector', 0)} | {left} |"
            )
    fakes = sorted(k for k in scenarios if k.startswith("fakes-"))
    if fakes:
        out += [
            "",
            "Without a database, on both cores (fake connections; 16 threads, one connection "
            "broken every 5 ms; 12 tasks, one cancelled every 0.2 to 2 ms):",
            "",
            "| scenario | core | kills or cancellations | caller errors | slowest acquire "
            "| made / closed / open |",
            "|---|---|---|---|---|---|",
        ]
        for key in fakes:
            f = scenarios[key]
            hits = f.get("kills", f.get("cancellations"))
            counts = f"{f['made']} / {f['closed']} / {f['open']}" if "made" in f else "-"
            slowest = f"{f['acquire_slowest_s']} s" if "acquire_slowest_s" in f else "-"
            kind = "broken under load" if "kills" in f else "cancellation storm"
            out.append(
                f"| {kind} | {f['core']} | {hits} | {f.get('caller_errors', 0)} | {slowest} "
                f"| {counts} |"
            )
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # python tests/_support/chaos.py [report.json]
    import sys

    source = Path(sys.argv[1]) if len(sys.argv) > 1 else report_path()
    print(markdown(json.loads(source.read_text())), end="")
