"""``pypool sweep --processes P``: the workload from P worker processes,
each with its own :class:`pypool.Pool`, as a service with several worker
processes (gunicorn, uvicorn, several hosts) runs it.

The workers start once (``spawn``: a fresh interpreter each, as a real
deployment has) and serve every size of the sweep: for each size the parent
asks every worker to open a pool of that size, waits until all are ready,
starts them together, and merges what they measured. A worker ignores
Ctrl-C; the parent stops it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from .workload import WorkloadFailed, first_line, measure, summary

__all__ = ["Workers", "WorkersFailed"]

#: Seconds a worker's pool may take to open all its connections.
OPEN_TIMEOUT = 30.0
#: Seconds a worker may take beyond its run to report (or to stop).
GRACE = 60.0


class WorkersFailed(Exception):
    """A worker process failed, died or stopped answering: one line."""


def _worker(pipe: Any, dsn: str, sql: str, clients: int, transaction_pooling: bool) -> None:
    """A worker process: opens a pool of the size asked, runs the workload
    when told, reports, until told to stop (None) or the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pool: Any = None
    try:
        import psycopg

        from .. import dbapi
        from ..pool import Pool

        # Behind a transaction pooler psycopg's prepared statements fail.
        extra = {"prepare_threshold": None} if transaction_pooling else {}
        factory = dbapi.connect_factory(psycopg.connect, dsn, autocommit=True, **extra)
    except Exception as exc:
        pipe.send(("error", first_line(exc)))
        return
    while True:
        try:
            message = pipe.recv()
        except (EOFError, OSError):
            break
        if message is None:
            break
        command, argument = message
        try:
            if command == "open":
                pool = Pool(
                    factory,
                    min_size=argument,
                    max_size=argument,
                    name=f"sweep-{os.getpid()}-{argument}",
                    transaction_pooling=transaction_pooling,
                )
                try:
                    pool.wait(timeout=OPEN_TIMEOUT, fail_fast=True)
                except Exception as exc:
                    raise WorkloadFailed(
                        f"pool size {argument}: cannot open {argument} connections: "
                        f"{first_line(exc.__cause__ or exc)}"
                    ) from None
                pipe.send(("ready", None))
            elif command == "run":
                latencies, elapsed, _ = measure(pool, sql, clients, argument)
                pool.close()
                pool = None
                pipe.send(("done", (latencies, elapsed)))
        except Exception as exc:
            if pool is not None:
                pool.close()
                pool = None
            text = str(exc) if isinstance(exc, WorkloadFailed) else first_line(exc)
            pipe.send(("error", text))
    if pool is not None:
        pool.close()


class Workers:
    """``processes`` worker processes running ``sql`` from ``clients``
    threads each, through a pool per process."""

    def __init__(
        self, processes: int, dsn: str, sql: str, clients: int, transaction_pooling: bool
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Any] = []
        self.processes: list[Any] = []
        self.seconds = 0.0
        for i in range(processes):
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker,
                args=(child, dsn, sql, clients, transaction_pooling),
                name=f"pypool-sweep-{i}",
                daemon=True,
            )
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)

    def _send(self, message: Any) -> None:
        for i, pipe in enumerate(self.pipes):
            try:
                pipe.send(message)
            except (OSError, EOFError):
                raise WorkersFailed(f"worker process {i + 1} exited") from None

    def _gather(self, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        answers = []
        for i, pipe in enumerate(self.pipes):
            try:
                ready = pipe.poll(max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise WorkersFailed(
                        f"worker process {i + 1} did not answer within {timeout:g} s"
                    )
                kind, value = pipe.recv()
            except (EOFError, OSError):
                code = self.processes[i].exitcode
                raise WorkersFailed(f"worker process {i + 1} exited (exit code {code})") from None
            if kind == "error":
                raise WorkersFailed(value)
            answers.append(value)
        return answers

    def run(self, size: int, seconds: float, halfway: Callable[[], Any]) -> dict[str, Any]:
        """Every worker opens a pool of ``size`` and runs the workload for
        ``seconds``; ``halfway()`` runs in this process halfway through (to
        count server connections). Returns the merged measurement and
        ``halfway``'s result."""
        self.seconds = seconds
        self._send(("open", size))
        self._gather(OPEN_TIMEOUT + GRACE)
        self._send(("run", seconds))
        time.sleep(seconds / 2)
        seen = halfway()
        answers = self._gather(seconds + GRACE)
        latencies = sorted(x for lat, _ in answers for x in lat)
        throughput = sum(len(lat) / elapsed for lat, elapsed in answers if elapsed > 0)
        result = summary(latencies, throughput)
        result["seconds"] = round(max(elapsed for _, elapsed in answers), 4)
        result["halfway"] = seen
        return result

    def close(self) -> None:
        """Stops every worker (the ones that do not stop in time are
        terminated)."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError, EOFError):
                pipe.send(None)
        deadline = time.monotonic() + self.seconds + 10.0
        for process in self.processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(5.0)
        for pipe in self.pipes:
            pipe.close()
