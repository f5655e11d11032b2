"""The public API's types, as a user's code sees them: mypy --strict checks
tests/typing/user_code.py (``assert_type`` of what ``Pool(factory)``,
``acquire()``, ``connection()``, ``run()`` and their asyncio twins give,
the psycopg pools' subscription, the adapters against ``pypool.Adapter``)
and must refuse each marked line of tests/typing/wrong_types.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is not installed: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = Path(__file__).resolve().parent / "typing"
GOOD = SNIPPETS / "user_code.py"
BAD = SNIPPETS / "wrong_types.py"

ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")


@pytest.fixture(scope="module")
def mypy_errors() -> dict[str, set[tuple[int, str]]]:
    """Both snippets in one mypy run (the slow part is loading the package
    and its drivers once): file name -> {(line, error code)}."""
    stdout, stderr, _status = mypy_api.run(
        [
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--no-error-summary",
            "--show-error-codes",
            "--no-pretty",
            str(GOOD),
            str(BAD),
        ]
    )
    assert not stderr, stderr
    found: dict[str, set[tuple[int, str]]] = {GOOD.name: set(), BAD.name: set()}
    for line in stdout.splitlines():
        match = ERROR.match(line)
        assert match, f"unexpected mypy output: {line}"
        found.setdefault(Path(match["path"]).name, set()).add((int(match["line"]), match["code"]))
    return found


def test_user_code_gets_the_factorys_type(mypy_errors: dict[str, set[tuple[int, str]]]) -> None:
    assert mypy_errors[GOOD.name] == set()


def test_wrong_types_are_refused(mypy_errors: dict[str, set[tuple[int, str]]]) -> None:
    expected = {
        (number, match[1])
        for number, text in enumerate(BAD.read_text().splitlines(), start=1)
        if (match := re.search(r"# error: ([a-z-]+)$", text))
    }
    assert len(expected) >= 5
    assert mypy_errors[BAD.name] == expected


def test_subscription_at_run_time() -> None:
    from typing import Any

    import psycopg

    import pypool
    import pypool.psycopg

    class MyConn: ...

    assert pypool.Pool[MyConn].__origin__ is pypool.Pool
    assert pypool.AsyncPool[MyConn].__origin__ is pypool.AsyncPool
    bound = pypool.Pool.with_core("python")
    assert bound[MyConn].__origin__ is bound
    pool = bound[MyConn](MyConn)
    try:
        assert isinstance(pool, pypool.Pool)
        conn = pool.acquire(timeout=5)
        assert isinstance(conn, MyConn)
        pool.release(conn)
    finally:
        pool.close()
    alias = pypool.psycopg.ConnectionPool[psycopg.Connection[Any]]
    assert alias.__origin__ is pypool.psycopg.ConnectionPool
