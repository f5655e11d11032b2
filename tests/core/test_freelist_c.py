"""Stress the native core's lock-free free list (src/pypool_freelist.h) in C.

tests/core/c/stress_freelist.c hammers the header from many pthreads, without
Python, and checks exclusive ownership, conservation of slots and the
happens-before of every hand-off.  Here it is compiled with ``cc`` and run

* under ThreadSanitizer in LIFO and FIFO mode (any TSAN report fails),
* as an optimised plain build with more operations, in both modes,
* as a negative control: built with ``-DPFL_STRESS_SELFTEST_DOUBLE_POP`` it
  lists one index twice on purpose and must then fail.

Skipped when there is no C compiler or ThreadSanitizer does not work here;
with ``CI=true`` a compiler that fails to build the program fails the tests.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tsan

ROOT = Path(__file__).resolve().parents[2]
SRC_DIR = ROOT / "src"
STRESS_C = Path(__file__).resolve().parent / "c" / "stress_freelist.c"
HEADER = SRC_DIR / "pypool_freelist.h"

IN_CI = os.environ.get("CI", "").lower() == "true"
COMPILE_TIMEOUT = 180
RUN_TIMEOUT = 240  # below the suite's per-test timeout, for a clearer failure

BASE_FLAGS = ["-std=c11", "-Wall", "-Wextra", "-pthread", f"-I{SRC_DIR}"]
TSAN_FLAGS = ["-O1", "-g", "-fsanitize=thread"]
PLAIN_FLAGS = ["-O2", "-g"]

# Operations for the plain (non-TSAN) build: about ten times the TSAN runs.
PLAIN_OPS = 20_000_000
SELFTEST_OPS = 200_000

TSAN_PROBE = r"""
#include <pthread.h>
#include <stdatomic.h>
static _Atomic int counter;
static void *work(void *arg) { atomic_fetch_add(&counter, 1); return arg; }
int main(void)
{
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], 0, work, 0);
    for (int i = 0; i < 2; i++) pthread_join(t[i], 0);
    return atomic_load(&counter) == 2 ? 0 : 1;
}
"""

MODES = [pytest.param([], id="lifo"), pytest.param(["--fifo"], id="fifo")]
# Every slot filled and no spare segment: the ring is exactly as large as the
# list, so it is full whenever no thread holds a slot.
FULL_RING = pytest.param(["--fifo", "--slots", "128", "--spare", "0"], id="fifo-full-ring")


def _mode(args: list[str]) -> str:
    return "fifo" if "--fifo" in args else "lifo"


def _compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _tsan_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TSAN_OPTIONS"] = "halt_on_error=1 second_deadlock_stack=1"
    return env


def _compile(cc: str, flags: list[str], source: Path, out: Path) -> None:
    """Build `source`; a failure skips, or fails with CI=true."""
    cmd = [cc, *BASE_FLAGS, *flags, str(source), "-o", str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        proc = None
        detail = repr(exc)
    else:
        detail = proc.stderr.strip()
    if proc is None or proc.returncode != 0:
        msg = f"compiling {source.name} with {' '.join(flags)} failed: {detail[-2000:]}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env)


@pytest.fixture(scope="module")
def cc() -> str:
    compiler = _compiler()
    if compiler is None:
        pytest.skip("no C compiler found (looked for cc, gcc, clang)")
    assert HEADER.is_file(), HEADER
    assert STRESS_C.is_file(), STRESS_C
    return compiler


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stress_freelist")


@pytest.fixture(scope="module")
def tsan_prefix(cc: str, build_dir: Path) -> list[str]:
    """The command prefix that makes TSAN binaries run here, or skip.

    TSAN maps its shadow memory at fixed addresses.  Some kernels randomise
    mmap with more entropy than the TSAN runtime in use expects, and every
    TSAN program then dies at start-up with "FATAL: ThreadSanitizer:
    unexpected memory mapping".  Running it with ASLR turned off for that one
    process (``setarch $(uname -m) -R``) avoids that.
    """
    if sys.platform == "win32":
        pytest.skip("ThreadSanitizer is not available on Windows")
    src = build_dir / "tsan_probe.c"
    exe = build_dir / "tsan_probe"
    src.write_text(TSAN_PROBE)
    _compile(cc, TSAN_FLAGS, src, exe)
    attempts: list[list[str]] = [[]]
    setarch = shutil.which("setarch")
    if setarch is not None:
        attempts.append([setarch, platform.machine(), "-R"])
    failures = []
    for prefix in attempts:
        try:
            proc = _run([*prefix, str(exe)], env=_tsan_env())
        except (OSError, subprocess.TimeoutExpired) as exc:
            failures.append(f"{prefix or 'direct'}: {exc!r}")
            continue
        if proc.returncode == 0 and "ThreadSanitizer" not in proc.stderr:
            return prefix
        failures.append(f"{prefix or 'direct'}: rc={proc.returncode} {proc.stderr.strip()[-500:]}")
    pytest.skip("ThreadSanitizer programs do not run here: " + " | ".join(failures))


@pytest.fixture(scope="module")
def tsan_binary(cc: str, build_dir: Path, tsan_prefix: list[str]) -> Path:
    exe = build_dir / "stress_freelist_tsan"
    _compile(cc, TSAN_FLAGS, STRESS_C, exe)
    return exe


@pytest.fixture(scope="module")
def plain_binary(cc: str, build_dir: Path) -> Path:
    exe = build_dir / "stress_freelist"
    _compile(cc, PLAIN_FLAGS, STRESS_C, exe)
    return exe


@pytest.fixture(scope="module")
def selftest_binary(cc: str, build_dir: Path) -> Path:
    exe = build_dir / "stress_freelist_selftest"
    _compile(cc, [*PLAIN_FLAGS, "-DPFL_STRESS_SELFTEST_DOUBLE_POP"], STRESS_C, exe)
    return exe


def _check_ok(proc: subprocess.CompletedProcess[str], mode: str) -> str:
    report = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-20000:]}"
    assert "WARNING: ThreadSanitizer" not in proc.stderr, report
    assert "ERROR: ThreadSanitizer" not in proc.stderr, report
    assert proc.returncode == 0, report
    ok = [line for line in proc.stdout.splitlines() if line.startswith("ok:")]
    assert len(ok) == 1, report
    assert ok[0].startswith(f"ok: {mode} "), report
    return ok[0]


@pytest.mark.parametrize("mode_args", [*MODES, FULL_RING])
def test_stress_under_tsan(tsan_binary: Path, tsan_prefix: list[str], mode_args: list[str]) -> None:
    proc = _run([*tsan_prefix, str(tsan_binary), *mode_args], env=_tsan_env())
    line = _check_ok(proc, _mode(mode_args))
    assert line.endswith(" tsan"), line  # the sanitizer really was built in
    print(line)


@pytest.mark.parametrize("mode_args", [*MODES, FULL_RING])
def test_stress_optimised(plain_binary: Path, mode_args: list[str]) -> None:
    proc = _run([str(plain_binary), "--ops", str(PLAIN_OPS), *mode_args])
    print(_check_ok(proc, _mode(mode_args)))


@pytest.mark.parametrize("mode_args", MODES)
def test_selftest_double_holding_is_caught(selftest_binary: Path, mode_args: list[str]) -> None:
    """Negative control: a slot given back while still held must be caught."""
    proc = _run([str(selftest_binary), "--ops", str(SELFTEST_OPS), *mode_args])
    report = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-5000:]}"
    assert proc.returncode != 0, report
    assert "ok:" not in proc.stdout, report
    assert "held twice" in proc.stderr or "duplicated" in proc.stderr, report
