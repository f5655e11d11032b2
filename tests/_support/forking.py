"""Fork tests: a script run in a fresh interpreter forks, its child reports
back over a pipe, and the script prints one JSON line for the test.

:func:`fork_script` puts :func:`fork_and_report` (its source) in front of a
script's body, so a script calls ``fork_and_report(child_main)``;
:func:`run_fork_script` runs the script and returns its last JSON line.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from _support.children import child_env


def fork_and_report(child_main: Callable[[dict[str, Any]], object]) -> tuple[dict[str, Any], int]:
    """Forks; the child runs ``child_main(report)``, which fills ``report``
    (an exception becomes ``report["error"]``), sends it to the parent and
    leaves through normal interpreter shutdown (atexit, finalizers). The
    parent gets the child's report and exit code."""
    import gc
    import json
    import os
    import sys

    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        report: dict[str, Any] = {}
        try:
            child_main(report)
        except BaseException as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
        with os.fdopen(write_end, "w") as out:
            json.dump(report, out)
        gc.collect()
        sys.exit(0)  # normal interpreter shutdown: atexit, finalizers
    os.close(write_end)
    with os.fdopen(read_end) as inp:
        child_report = json.loads(inp.read() or "{}")
    _, status = os.waitpid(child, 0)
    return child_report, os.waitstatus_to_exitcode(status)


def fork_script(body: str) -> str:
    """``body`` with :func:`fork_and_report` defined before it."""
    harness = inspect.getsource(fork_and_report)
    return f"from __future__ import annotations\n\n{harness}\n\n{body}"


def run_fork_script(script: str, args: Sequence[str], timeout: float) -> dict[str, Any]:
    """Runs ``script`` in a fresh interpreter (``child_env``) with ``args``;
    asserts it exits 0 and prints a JSON line, and returns the last one."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )
    assert proc.returncode == 0, f"script failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no report:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return dict(json.loads(lines[-1]))
