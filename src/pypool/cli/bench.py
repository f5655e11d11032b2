"""The ``pypool`` command (also ``python -m pypool``).

``pypool bench`` measures the core's hot path against a floor and a reference
pool, in one interleaved run:

* **uncontended**: one thread, the cycle ``conn = try_acquire(); release(conn)``
  repeated in batches; the result is nanoseconds per cycle. The floor is
  ``lst.append(lst.pop())`` on a one-element list, the least a cycle of two
  calls can cost in this interpreter.
* **threads**: T threads share 4 connections, each doing ``acquire(timeout)``
  and ``release()`` in a loop; all start together on a barrier and the clock
  runs from the barrier to the last thread's end. The result is cycles per
  second, all threads together.

The contenders are measured round-robin (each round visits every contender, in
a rotated order), so that a noisy machine slows all of them alike; each table
shows the median over the rounds and the spread (min-max). Nothing is
subtracted from the times.

``--json FILE`` writes the results in this form (schema ``pypool-bench/1``)::

    {
      "schema": "pypool-bench/1",
      "complete": true,            # false when interrupted (Ctrl-C)
      "rounds_done": 5,            # rounds measured completely
      "environment": {
        "python": "3.12.1", "implementation": "cpython",
        "pypool": "0.1.0", "core": "native",   # pypool.CORE
        "platform": "Linux-...", "machine": "x86_64",
        "cpu_count": 8,            # os.cpu_count()
        "cpus_usable": 8,          # CPUs this process may run on, or null
        "switch_interval": 0.005,  # sys.getswitchinterval()
        "started": "2025-01-31T12:00:00+00:00"
      },
      "settings": {
        "rounds": 5, "threads": [1, 2, 4, 8, 16], "connections": 4,
        "batch": 5000,             # cycles per uncontended sample
        "batches_per_round": 3,    # uncontended samples per contender per round
        "thread_run_seconds": 0.1, # target length of one threaded run
        "quick": false
      },
      "contenders": [              # every known contender, usable or not
        {"name": "native", "description": "...", "available": true, "reason": null}
      ],
      "results": [                 # one per contender and measurement
        {"benchmark": "uncontended", "contender": "python", "threads": 1,
         "unit": "ns/cycle", "cycles": 5000,        # cycles per sample
         "samples": [1510.2, ...], "median": 1512.0, "min": 1500.1, "max": 1530.7,
         "q1": 1505.0, "q3": 1520.0,
         "vs_floor": 54.2},                        # median / the floor's median
        {"benchmark": "threads", "contender": "python", "threads": 4,
         "unit": "cycles/s", "cycles": 400000,     # cycles per run, all threads
         "samples": [...], "median": ..., "min": ..., "max": ..., "q1": ..., "q3": ...,
         "vs_floor": null}
      ],
      "failures": [                # measurements that raised, each left out
        {"what": "python, 8 threads", "error": "PoolTimeout: ..."}
      ],
      "native_vs_python": {        # null when either core is missing
        "uncontended_time": 0.05,  # native ns/cycle / python ns/cycle
        "threads_throughput": [{"threads": 1, "ratio": 12.5}, ...]
      }
    }

New contenders (the full ``Pool``, other pools) are added to :data:`CONTENDERS`
with :func:`register`; new commands get a subparser in :func:`build_parser`
and a function in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, TextIO

from . import peers
from .contenders import CONNECTIONS, CONTENDERS, Contender, Handles
from .output import (
    CLI_EXTRA,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Progress,
    check_plot,
    environment,
    hint_extras,
    json_path,
    png_figure,
    png_path,
    positive,
    table,
    write_outputs,
)

__all__ = ["SCHEMA", "add_arguments", "run"]

SCHEMA = "pypool-bench/1"

#: The timeout given to ``acquire`` in threaded runs; never reached in a sane run.
ACQUIRE_TIMEOUT = 30.0
DEFAULT_THREADS = (1, 2, 4, 8, 16)
MAX_THREADS = 1024


@dataclass(frozen=True)
class _Settings:
    rounds: int
    batch: int
    batches_per_round: int
    thread_run_seconds: float


# Defaults finish in well under a minute on a 2-core machine; --quick in seconds.
_FULL = _Settings(rounds=5, batch=5_000, batches_per_round=3, thread_run_seconds=0.1)
_QUICK = _Settings(rounds=2, batch=500, batches_per_round=1, thread_run_seconds=0.01)


# ------------------------------------------------------------------ measuring


def _uncontended_ns(handles: Handles, cycles: int) -> float:
    """Nanoseconds per ``try_acquire`` + ``release`` cycle over one batch."""
    acquire, release = handles.try_acquire, handles.release
    t0 = time.perf_counter_ns()
    for _ in repeat(None, cycles):
        release(acquire())
    return (time.perf_counter_ns() - t0) / cycles


class _WorkerFailed(Exception):
    pass


def _threaded_seconds(handles: Handles, threads: int, per_thread: int) -> float:
    """Seconds for ``threads`` threads to do ``per_thread`` cycles each,
    from the moment all are released by the barrier to the last one's end."""
    acquire, release = handles.acquire, handles.release
    assert acquire is not None
    started: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1, action=lambda: started.append(time.perf_counter_ns()))

    def work() -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        try:
            for _ in repeat(None, per_thread):
                release(acquire(ACQUIRE_TIMEOUT))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    try:
        barrier.wait()
        for w in workers:
            w.join()
    except BaseException:
        barrier.abort()
        raise
    ended = time.perf_counter_ns()
    if errors:
        exc = errors[0]
        raise _WorkerFailed(f"{type(exc).__name__}: {exc}") from exc
    return max(ended - started[0], 1) / 1e9


def _calibrate(handles: Handles, threads: int, seconds: float) -> int:
    """Cycles per thread for a threaded run of about ``seconds``."""
    per_thread = max(20, 2000 // threads)
    while True:
        elapsed = _threaded_seconds(handles, threads, per_thread)
        if elapsed >= seconds / 8 or per_thread >= 10**8:
            break
        per_thread *= 4 if elapsed < seconds / 64 else 2
    return max(10, round(per_thread * seconds / elapsed))


def _summary(samples: list[float]) -> dict[str, float]:
    if len(samples) >= 2:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1 = q3 = samples[0]
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "q1": q1,
        "q3": q3,
    }


@dataclass
class _Series:
    benchmark: str  # "uncontended" or "threads"
    contender: str
    threads: int
    unit: str
    cycles: int = 0
    samples: list[float] = field(default_factory=list)


@dataclass
class _Run:
    """A bench run's settings and everything measured so far."""

    settings: _Settings
    threads: list[int]
    contenders: list[Contender]
    skipped: dict[str, str]
    quick: bool
    started: str
    rounds_done: int = 0
    complete: bool = False
    uncontended: dict[str, _Series] = field(default_factory=dict)
    threaded: dict[tuple[str, int], _Series] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # what failed -> the error
    broken: set[tuple[str, int]] = field(default_factory=set)  # (contender, threads) failed


def _measure(run: _Run, handles: dict[str, Handles], progress: Progress) -> None:
    settings = run.settings
    by_name = {c.name: c for c in run.contenders}
    names = list(by_name)

    def failed(name: str, threads: int, exc: _WorkerFailed) -> None:
        # Only this thread count is lost: the contender is rebuilt, in case
        # the failure left its pool in a bad state, and measuring goes on.
        run.failed[f"{name}, {threads} threads"] = peers.masked(str(exc))
        run.broken.add((name, threads))
        old = handles[name]
        handles[name] = by_name[name].setup(CONNECTIONS)
        with contextlib.suppress(Exception):
            old.close()

    for name in names:
        run.uncontended[name] = _Series("uncontended", name, 1, "ns/cycle", settings.batch)
        _uncontended_ns(handles[name], settings.batch)  # warm-up, not recorded
    waiting = [name for name in names if handles[name].acquire is not None]
    progress.set_total(
        len(waiting) * len(run.threads)
        + settings.rounds * (settings.batches_per_round + len(run.threads))
    )
    per_thread: dict[tuple[str, int], int] = {}
    for name in waiting:
        for t in run.threads:
            progress.show(f"calibrating {name}, {t} threads")
            run.threaded[name, t] = _Series("threads", name, t, "cycles/s")
            try:
                per_thread[name, t] = _calibrate(handles[name], t, settings.thread_run_seconds)
            except _WorkerFailed as exc:
                failed(name, t, exc)
                continue
            run.threaded[name, t].cycles = per_thread[name, t] * t

    for r in range(settings.rounds):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        for b in range(settings.batches_per_round):
            progress.show(f"round {r + 1}/{settings.rounds}: uncontended ({b + 1})")
            for name in order:
                ns = _uncontended_ns(handles[name], settings.batch)
                run.uncontended[name].samples.append(ns)
        for t in run.threads:
            progress.show(f"round {r + 1}/{settings.rounds}: {t} threads")
            for name in order:
                if name not in waiting or (name, t) in run.broken:
                    continue
                n = per_thread[name, t]
                try:
                    elapsed = _threaded_seconds(handles[name], t, n)
                except _WorkerFailed as exc:
                    failed(name, t, exc)
                    continue
                run.threaded[name, t].samples.append(n * t / elapsed)
        run.rounds_done = r + 1
    progress.clear()
    run.complete = True


# ------------------------------------------------------------------ reporting


def _median(series: _Series | None) -> float | None:
    if series is None or not series.samples:
        return None
    return statistics.median(series.samples)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _report(run: _Run, out: TextIO) -> None:
    env = environment(run.started)
    cpus = env["cpus_usable"] or env["cpu_count"]
    s = run.settings
    print(
        f"pypool bench: pypool {env['pypool']} (CORE={env['core']}), "
        f"{env['implementation']} {env['python']}, {env['platform']}, {cpus} CPUs",
        file=out,
    )
    state = "" if run.complete else " (interrupted)"
    print(
        f"{run.rounds_done}/{s.rounds} rounds{state}, contenders interleaved; "
        f"median over rounds, spread = min-max",
        file=out,
    )
    for name, reason in run.skipped.items():
        print(f"skipped {name}: {reason}", file=out)
    for name, reason in run.failed.items():
        print(f"failed {name}: {reason}", file=out)

    names = [c.name for c in run.contenders if c.name in run.uncontended]
    floor = _median(run.uncontended.get("floor"))
    python = _median(run.uncontended.get("python"))
    print(file=out)
    print(
        f"Uncontended cycle: try_acquire() + release(), 1 thread, {CONNECTIONS} connections "
        f"({s.batch} cycles per sample)",
        file=out,
    )
    rows = [["contender", "ns/cycle", "spread", "x floor", "x python"]]
    for name in names:
        series = run.uncontended[name]
        med = _median(series)
        if med is None:
            rows.append([name, "-", "-", "-", "-"])
            continue
        spread = f"{min(series.samples):.1f}-{max(series.samples):.1f}"
        rows.append(
            [
                name,
                f"{med:.1f}",
                spread,
                _fmt_ratio(_ratio(med, floor)),
                _fmt_ratio(_ratio(med, python)),
            ]
        )
    for line in table(rows, [False, True, True, True, True]):
        print(line, file=out)
    native = _median(run.uncontended.get("native"))
    ratio = _ratio(native, python)
    if ratio is not None:
        print(
            f"native/python: {ratio:.3f} of the time ({1 / ratio:.1f}x as fast)",
            file=out,
        )

    thread_names = [c.name for c in run.contenders if (c.name, run.threads[0]) in run.threaded]
    if not thread_names:
        return
    lo, hi = run.threads[0], run.threads[-1]
    print(file=out)
    print(
        f"Throughput: acquire(timeout) + release(), cycles/s of all threads together, "
        f"N threads sharing {CONNECTIONS} connections",
        file=out,
    )
    header = ["contender", *(f"{t} thr" for t in run.threads), f"kept {hi}/{lo}", "spread"]
    rows = [header]
    for name in thread_names:
        row = [name]
        worst = 0.0
        for t in run.threads:
            series = run.threaded[name, t]
            med = _median(series)
            row.append("-" if med is None else f"{med:,.0f}")
            if med:
                worst = max(worst, (max(series.samples) - min(series.samples)) / med)
        kept = _ratio(_median(run.threaded[name, hi]), _median(run.threaded[name, lo]))
        row.append("-" if kept is None else f"{kept * 100:.0f}%")
        row.append(f"{worst * 100:.0f}%")
        rows.append(row)
    for line in table(rows, [False, *([True] * (len(header) - 1))]):
        print(line, file=out)
    print(
        f"kept {hi}/{lo}: throughput at {hi} threads as % of the same contender's at {lo}; "
        "spread: the widest (max-min)/median over the thread counts",
        file=out,
    )
    if "floor" in run.uncontended:
        print("(the floor cannot wait, so it takes no part in threaded runs)", file=out)
    n, p = "native", "python"
    ratios = [
        (t, _ratio(_median(run.threaded.get((n, t))), _median(run.threaded.get((p, t)))))
        for t in run.threads
    ]
    if all(r is not None for _, r in ratios):
        text = ", ".join(f"{t} thr {r:.1f}x" for t, r in ratios if r is not None)
        print(f"native/python throughput: {text}", file=out)


def _result(series: _Series, floor: float | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": series.benchmark,
        "contender": series.contender,
        "threads": series.threads,
        "unit": series.unit,
        "cycles": series.cycles,
        "samples": list(series.samples),
    }
    if series.samples:
        result.update(_summary(series.samples))
    else:
        result.update(dict.fromkeys(("median", "min", "max", "q1", "q3")))
    result["vs_floor"] = (
        _ratio(_median(series), floor) if series.benchmark == "uncontended" else None
    )
    return result


def _json(run: _Run) -> dict[str, Any]:
    floor = _median(run.uncontended.get("floor"))
    results = [
        _result(run.uncontended[c.name], floor) for c in run.contenders if c.name in run.uncontended
    ]
    results += [
        _result(run.threaded[c.name, t], None)
        for c in run.contenders
        for t in run.threads
        if (c.name, t) in run.threaded
    ]
    native_vs_python: dict[str, Any] | None = None
    if "native" in run.uncontended and "python" in run.uncontended:
        native_vs_python = {
            "uncontended_time": _ratio(
                _median(run.uncontended["native"]), _median(run.uncontended["python"])
            ),
            "threads_throughput": [
                {
                    "threads": t,
                    "ratio": _ratio(
                        _median(run.threaded.get(("native", t))),
                        _median(run.threaded.get(("python", t))),
                    ),
                }
                for t in run.threads
            ],
        }
    s = run.settings
    return {
        "schema": SCHEMA,
        "complete": run.complete,
        "rounds_done": run.rounds_done,
        "environment": environment(run.started),
        "settings": {
            "rounds": s.rounds,
            "threads": list(run.threads),
            "connections": CONNECTIONS,
            "batch": s.batch,
            "batches_per_round": s.batches_per_round,
            "thread_run_seconds": s.thread_run_seconds,
            "quick": run.quick,
        },
        "contenders": [
            {
                "name": c.name,
                "description": c.description,
                "available": c.name not in run.skipped,
                "reason": run.skipped.get(c.name),
            }
            for c in CONTENDERS
            if c in run.contenders or c.name in run.skipped
        ],
        "results": results,
        "failures": [{"what": what, "error": error} for what, error in run.failed.items()],
        "native_vs_python": native_vs_python,
    }


# ------------------------------------------------------------------ commands


# ------------------------------------------------------------------ with a query

#: The ``--dsn`` table: a real ``SELECT 1`` per cycle, so the cost of a round
#: trip to the server and of connecting is in the numbers.
QUERY_CONTENDERS = {
    "connect-each": "no pool: psycopg.connect(), SELECT 1, close() every cycle",
    "persistent": "no pool: one psycopg connection per thread, kept open, SELECT 1",
    "pool-native-pg": f"pypool.Pool({CONNECTIONS} psycopg connections): "
    "with pool.connection() as c: SELECT 1",
}


@dataclass
class _QueryRun:
    dsn: str
    threads: list[int]
    rounds: int
    seconds: float
    rounds_done: int = 0
    results: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    failed: str | None = None


def _timed_threads(
    threads: int,
    seconds: float,
    make: Callable[[], Any],
    cycle: Callable[[Any], object],
    close: Callable[[Any], object],
) -> float:
    """Cycles per second of ``threads`` threads calling ``cycle(state)`` for
    ``seconds``; each thread's ``state`` is ``make()``, made before the clock starts."""
    stop = threading.Event()
    counts = [0] * threads
    errors: list[BaseException] = []
    states = [make() for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        state, n = states[i], 0
        try:
            barrier.wait()
            while not stop.is_set():
                cycle(state)
                n += 1
        except threading.BrokenBarrierError:
            return
        except BaseException as exc:
            errors.append(exc)
            stop.set()
        counts[i] = n

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    try:
        barrier.wait()
        t0 = time.perf_counter()
        stop.wait(seconds)
        stop.set()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
    except BaseException:
        stop.set()
        barrier.abort()
        raise
    finally:
        for state in states:
            with contextlib.suppress(Exception):
                close(state)
    if errors:
        exc = errors[0]
        raise _WorkerFailed(f"{type(exc).__name__}: {exc}") from exc
    return sum(counts) / elapsed


def _measure_queries(q: _QueryRun, progress: Progress) -> None:
    from ..dbapi import Secrets

    try:
        import psycopg

        from .. import dbapi
        from ..pool import Pool
    except ImportError:
        q.failed = "needs psycopg: pip install 'pypool[psycopg]'"
        return

    def connect() -> Any:
        return psycopg.connect(q.dsn, autocommit=True, connect_timeout=5)

    def select_one(conn: Any) -> None:
        conn.execute("SELECT 1").fetchone()

    def connect_each(_: Any) -> None:
        with connect() as conn:
            select_one(conn)

    def pooled(_: Any) -> None:
        with pool.connection() as conn:
            select_one(conn)

    pool: Any = None
    try:
        connect().close()
        factory = dbapi.connect_factory(psycopg.connect, q.dsn, autocommit=True)
        pool = Pool(factory, min_size=CONNECTIONS, max_size=CONNECTIONS, name="bench-query")
        pool.wait(timeout=10.0, fail_fast=True)
        plans: dict[str, tuple[Callable[[], Any], Callable[[Any], object], Callable[[Any], object]]]
        plans = {
            "connect-each": (_nothing, connect_each, _drop),
            "persistent": (connect, select_one, operator_close),
            "pool-native-pg": (_nothing, pooled, _drop),
        }
        names = list(plans)
        progress.set_total(progress.total + q.rounds * len(names) * len(q.threads))
        for r in range(q.rounds):
            shift = r % len(names)
            for t in q.threads:
                for name in names[shift:] + names[:shift]:
                    progress.show(f"with a query, round {r + 1}/{q.rounds}: {name}, {t} threads")
                    make, cycle, close = plans[name]
                    rate = _timed_threads(t, q.seconds, make, cycle, close)
                    q.results.setdefault((name, t), []).append(rate)
            q.rounds_done = r + 1
    except Exception as exc:
        q.failed = Secrets(q.dsn).mask(f"{type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        if pool is not None:
            pool.close()


def _nothing() -> None:
    return None


def _drop(_state: Any) -> None:
    """A teardown with nothing to tear down."""


def operator_close(conn: Any) -> None:
    conn.close()


def _report_queries(q: _QueryRun, out: TextIO) -> None:
    print(file=out)
    print(
        f"With a query: SELECT 1 per cycle on a real server (psycopg), cycles/s of all "
        f"threads together; median of {q.rounds_done} rounds of {q.seconds:g} s",
        file=out,
    )
    if q.failed:
        print(f"failed with a query: {q.failed}", file=out)
    if not q.results:
        return
    rows = [["contender", *(f"{t} thr" for t in q.threads)]]
    for name in QUERY_CONTENDERS:
        row = [name]
        for t in q.threads:
            samples = q.results.get((name, t))
            row.append(f"{statistics.median(samples):,.0f}" if samples else "-")
        rows.append(row)
    for line in table(rows, [False, *([True] * len(q.threads))]):
        print(line, file=out)
    for name, text in QUERY_CONTENDERS.items():
        print(f"  {name}: {text}", file=out)


def _queries_json(q: _QueryRun) -> dict[str, Any]:
    return {
        "rounds_done": q.rounds_done,
        "seconds": q.seconds,
        "failed": q.failed,
        "contenders": dict(QUERY_CONTENDERS),
        "results": [
            {
                "contender": name,
                "threads": t,
                "unit": "cycles/s",
                "samples": samples,
                **_summary(samples),
            }
            for (name, t), samples in q.results.items()
        ],
    }


def _plot(run: _Run, path: str) -> None:
    """Writes a PNG of throughput against threads, one line per contender."""
    with png_figure(path, figsize=(9.5, 5), dpi=100) as ax:
        values: list[float] = []
        for c in run.contenders:
            points = [(t, _median(run.threaded.get((c.name, t)))) for t in run.threads]
            points = [(t, v) for t, v in points if v]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            values += ys
            ax.plot(xs, ys, marker="o", label=c.name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(run.threads)
        ax.set_xticklabels([str(t) for t in run.threads])
        if values and max(values) > 20 * min(values):
            ax.set_yscale("log")
        ax.set_xlabel("threads")
        ax.set_ylabel("acquire + release cycles/s (all threads)")
        state = "" if run.complete else ", interrupted"
        ax.set_title(
            f"pypool bench: throughput, threads sharing {CONNECTIONS} connections "
            f"({run.rounds_done} rounds{state}, medians)"
        )
        ax.grid(True, which="both", alpha=0.3)
        if values:
            ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))


def run(args: argparse.Namespace) -> int:
    """``pypool bench``."""
    error = check_plot("bench", args.plot)
    if error:
        print(error, file=sys.stderr)
        return EXIT_FAILED
    hint_extras("bench", plot=args.plot is not None)
    if args.dsn:
        peers.DSN = args.dsn
    base = _QUICK if args.quick else _FULL
    settings = _Settings(
        rounds=args.rounds if args.rounds is not None else base.rounds,
        batch=base.batch,
        batches_per_round=base.batches_per_round,
        thread_run_seconds=base.thread_run_seconds,
    )
    wanted = args.contenders or [c.name for c in CONTENDERS]
    skipped: dict[str, str] = {}
    run = _Run(
        settings=settings,
        threads=args.threads,
        contenders=[],
        skipped=skipped,
        quick=args.quick,
        started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    handles: dict[str, Handles] = {}
    progress = Progress()
    interrupted = False
    queries: _QueryRun | None = None
    try:
        contenders: list[Contender] = []
        for c in CONTENDERS:
            if c.name not in wanted:
                continue
            reason = c.check()
            if reason is None:
                contenders.append(c)
            else:
                skipped[c.name] = reason
        for c in contenders:
            progress.show(f"setting up {c.name}", advance=False)
            try:
                handles[c.name] = c.setup(CONNECTIONS)
            except Exception as exc:
                skipped[c.name] = peers.masked(f"setup failed: {type(exc).__name__}: {exc}")
                continue
            run.contenders.append(c)
        if not run.contenders:
            progress.clear()
            reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
            print(f"pypool bench: nothing to measure ({reasons})", file=sys.stderr)
            return EXIT_FAILED
        _measure(run, handles, progress)
        if args.dsn:
            queries = _QueryRun(
                args.dsn, run.threads, 1 if args.quick else 3, 0.05 if args.quick else 0.2
            )
            _measure_queries(queries, progress)
    except KeyboardInterrupt:
        interrupted = True
        progress.clear()
        print("pypool bench: interrupted; results so far:", file=sys.stderr)
    finally:
        progress.clear()
    if not interrupted:
        for h in handles.values():
            with contextlib.suppress(Exception):
                h.close()
    _report(run, sys.stdout)
    if queries is not None:
        _report_queries(queries, sys.stdout)
    sys.stdout.flush()

    def doc() -> dict[str, Any]:
        result = _json(run)
        if queries is not None:
            result["with_query"] = _queries_json(queries)
        return result

    if not write_outputs("bench", doc, args.json, functools.partial(_plot, run), args.plot):
        return EXIT_FAILED
    if interrupted:
        return EXIT_INTERRUPTED
    failed = run.failed or (queries is not None and queries.failed)
    return EXIT_FAILED if failed else EXIT_OK


def _thread_counts(text: str) -> list[int]:
    counts = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise argparse.ArgumentTypeError(f"expected thread counts like 1,2,4, got {text!r}")
        counts.append(positive(part, MAX_THREADS))
    return sorted(set(counts))


def _contender_names(text: str) -> list[str]:
    known = [c.name for c in CONTENDERS]
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown contender {', '.join(unknown) or repr(text)} (known: {', '.join(known)})"
        )
    return names


def add_arguments(bench: argparse.ArgumentParser) -> None:
    """The arguments of ``pypool bench``."""
    bench.add_argument(
        "--rounds",
        type=positive,
        metavar="N",
        help=f"rounds over all contenders (default {_FULL.rounds}, with --quick {_QUICK.rounds})",
    )
    bench.add_argument(
        "--threads",
        type=_thread_counts,
        default=list(DEFAULT_THREADS),
        metavar="LIST",
        help="thread counts for the throughput table (default 1,2,4,8,16)",
    )
    bench.add_argument(
        "--contenders",
        type=_contender_names,
        metavar="LIST",
        help=f"measure only these (default all: {','.join(c.name for c in CONTENDERS)})",
    )
    bench.add_argument(
        "--quick", action="store_true", help="tiny counts, a few seconds (for tests)"
    )
    bench.add_argument(
        "--json", type=json_path, metavar="FILE", help=f"also write the results ({SCHEMA})"
    )
    bench.add_argument(
        "--plot",
        type=png_path,
        metavar="FILE.png",
        help=f"also draw throughput against threads, one line per contender ({CLI_EXTRA})",
    )
    bench.add_argument(
        "--dsn",
        metavar="URL",
        help="a PostgreSQL to measure the pools that need a server too (psycopg_pool, "
        "psycopg2, the Pool on real connections) and a table with a SELECT 1 per cycle "
        "(no pool, persistent connections, the Pool); default $PYPOOL_BENCH_DSN",
    )
