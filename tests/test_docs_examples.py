"""Every ```python block of README.md and docs/ runs, against the test databases.

Each block is a complete program: it creates the tables it uses, defines what
it names and closes what it opens. It runs in a fresh interpreter, in an empty
temporary directory, with a timeout. The examples name their servers the way
a reader's code would, and the test points them at the test databases:

- PostgreSQL: ``postgresql://app@db/app`` (also ``postgresql+psycopg://``,
  ``postgresql+asyncpg://``, and ``app@bouncer:6432`` for the pages about
  PgBouncer, whose examples then run against PostgreSQL directly) becomes
  ``PYPOOL_TEST_DSN``, with the connection's ``search_path`` set to a schema
  made for that one run and dropped after it (not for SQLAlchemy's asyncpg
  URLs, whose driver takes no ``options``): tables an example creates never
  clash with a parallel run;
- MariaDB: the keywords ``host="db"``, ``user="app"``, ``database="app"``
  become ``PYPOOL_TEST_MYSQL``'s host and port, user and password, and a
  database made for that one run and dropped after it.

A block that cannot run on its own is marked on the line before it with
``<!-- example: fragment (why not) -->``: it is compiled, not run. A block
left unmarked that fails, leaves a pool open (its threads still running) or
drops a connection unclosed (a ``ResourceWarning``) fails the test.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from _support.databases import mysql_params

pytestmark = pytest.mark.db

ROOT = Path(__file__).resolve().parent.parent
#: Where the examples are: the README and every Markdown page of the docs.
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

#: Seconds one example may run (generous: the machine may be loaded).
TIMEOUT = 180.0

_OPEN_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_MARK = re.compile(r"^\s*<!--\s*example:\s*(?P<kind>[\w-]+)\s*(?P<why>.*?)\s*-->\s*$")
_PYTHON = {"python", "py", "python3"}


@dataclass(frozen=True)
class Example:
    """One fenced ```python block: where it is, its code, and the reason
    given when it is marked as a fragment (None: it must run)."""

    path: Path
    line: int
    code: str
    fragment: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


class MarkError(ValueError):
    """A mark before a block that is not ``example: fragment (why)``."""


def extract(path: Path) -> list[Example]:
    """The ```python blocks of a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    examples = []
    i = 0
    while i < len(lines):
        opening = _OPEN_FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        info = opening["info"].split()
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        body = []
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            line = lines[j]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
            j += 1
        if info and info[0].lower() in _PYTHON:
            examples.append(Example(path, i + 1, "\n".join(body) + "\n", _fragment(lines, i, path)))
        i = j + 1
    return examples


def _fragment(lines: list[str], fence_index: int, path: Path) -> str | None:
    """The reason of a fragment mark on the last non-blank line before the
    fence, or None when there is none."""
    k = fence_index - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    mark = _MARK.match(lines[k]) if k >= 0 else None
    if mark is None:
        return None
    where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{k + 1}"
    if mark["kind"] != "fragment":
        raise MarkError(f"{where}: unknown mark 'example: {mark['kind']}' (only 'fragment')")
    why = mark["why"].strip("()-:— ")
    if not why:
        raise MarkError(f"{where}: a fragment mark must say why the block cannot run on its own")
    return why


def all_examples() -> list[Example]:
    return [example for path in SOURCES for example in extract(path)]


# ------------------------------------------------------------------ rewriting

#: The PostgreSQL URLs the examples use (any ``+driver`` of SQLAlchemy's).
_PG_URL = re.compile(r"\b(?P<scheme>postgresql(?:\+\w+)?)://app@(?:db|bouncer)(?::\d+)?/app\b")
#: The MariaDB keywords the examples use.
_MYSQL_KEYWORDS = re.compile(
    r"""\b(?P<key>host|user|database)=(?P<q>["'])(?P<value>db|app)(?P=q)"""
)
#: What is left of an example host after rewriting means a convention was missed.
_LEFT_OVER = re.compile(r"@(?:db|bouncer)\b|host=[\"']db[\"']")


def pg_url(test_dsn: str, scheme: str, schema: str | None) -> str:
    """``test_dsn`` with ``scheme`` and, when ``schema`` is given, a
    ``search_path`` of that schema (libpq's and asyncpg's ``options``)."""
    parts = urlsplit(test_dsn)
    query = parts.query
    if schema is not None:
        option = "options=" + quote(f"-c search_path={schema}", safe="")
        query = f"{query}&{option}" if query else option
    return urlunsplit((scheme, parts.netloc, parts.path, query, parts.fragment))


def rewrite(code: str, test_dsn: str, schema: str, mysql: dict[str, Any] | None) -> str:
    """The example's code pointed at the test databases."""

    def pg(match: re.Match[str]) -> str:
        scheme = match["scheme"]
        # SQLAlchemy's asyncpg dialect passes URL parameters to asyncpg.connect()
        # as keywords, and asyncpg.connect() has no ``options`` keyword.
        return pg_url(test_dsn, scheme, None if scheme == "postgresql+asyncpg" else schema)

    code = _PG_URL.sub(pg, code)
    if mysql is not None:
        replacements = {
            "host": f"host={mysql['host']!r}, port={mysql['port']!r}",
            "user": f"user={mysql['user']!r}, password={mysql['password']!r}",
            "database": f"database={mysql['database']!r}",
        }
        code = _MYSQL_KEYWORDS.sub(lambda m: replacements[m["key"]], code)
    return code


def uses_mysql(code: str) -> bool:
    return _MYSQL_KEYWORDS.search(code) is not None


# ------------------------------------------------------------------ running

#: Runs one example as ``__main__``, then checks that it left nothing open.
RUNNER = textwrap.dedent(
    """
    import ast
    import functools
    import gc
    import sys
    import threading
    import time
    import warnings

    problems = []


    def unraisable(u):
        problems.append(f"{u.exc_type.__name__}: {u.exc_value} ({u.err_msg or 'in'} {u.object!r})")


    sys.unraisablehook = unraisable
    # A connection dropped unclosed warns; make that an error the hook sees.
    warnings.simplefilter("error", ResourceWarning)

    # A coroutine made and never awaited warns; make that an error too.
    warnings.filterwarnings("error", "coroutine .* was never awaited", RuntimeWarning)

    path, name, grace = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), name)

    # Every coroutine function the example defines at its top level must run:
    # an asyncio example that only defines them shows nothing.
    started = set()


    def _track(fn):
        @functools.wraps(fn)
        async def tracked(*args, **kwargs):
            started.add(fn.__name__)
            return await fn(*args, **kwargs)

        return tracked


    defined = []
    for node in tree.body:
        if isinstance(node, ast.AsyncFunctionDef):
            defined.append(node.name)
            node.decorator_list.append(ast.Name("_track_example_coroutine", ast.Load()))
    ast.fix_missing_locations(tree)
    namespace = {"__name__": "__main__", "__file__": path, "_track_example_coroutine": _track}
    exec(compile(tree, name, "exec"), namespace)
    never = [n for n in defined if n not in started]
    if never:
        problems.append(f"coroutine functions never run (asyncio.run(...) them): {never}")

    # A pool the example opened must be closed: its threads end.
    def pool_threads():
        return sorted(t.name for t in threading.enumerate() if t.name.startswith("pypool-"))

    deadline = time.monotonic() + grace
    while pool_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    if pool_threads():
        problems.append(f"a pool was left open: its threads still run: {pool_threads()}")
    namespace.clear()
    gc.collect()
    if problems:
        sys.exit(f"{name}:\\n" + "\\n".join(problems))
    """
)


@dataclass
class Run:
    returncode: int
    output: str


def run_code(
    code: str, name: str, tmp_path: Path, grace: float = 30.0, timeout: float = TIMEOUT
) -> Run:
    """Runs ``code`` in a fresh interpreter in ``tmp_path``, for at most
    ``timeout`` seconds; a pool's threads may take ``grace`` seconds to end
    after the code closed it."""
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    runner = tmp_path / "_run_example.py"
    runner.write_text(RUNNER, encoding="utf-8")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.run(
            [sys.executable, str(runner), str(script), name, str(grace)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        # What it printed so far (bytes, whatever ``text`` says).
        output = "".join(
            part.decode(errors="replace") if isinstance(part, bytes) else part
            for part in (exc.stdout, exc.stderr)
            if part
        )
        return Run(-1, f"timed out after {timeout:.0f} s\n{output}")
    return Run(proc.returncode, proc.stdout + proc.stderr)


@pytest.fixture
def pg_schema(dsn: str) -> Iterator[str]:
    """A schema of this run's own, dropped with what the example made in it."""
    psycopg = pytest.importorskip("psycopg")
    schema = f"pypool_doc_{secrets.token_hex(6)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def mysql_database() -> Iterator[dict[str, Any]]:
    """Connect arguments for a MariaDB database of this run's own."""
    params = mysql_params()
    import pymysql

    database = f"pypool_doc_{secrets.token_hex(6)}"
    admin = pymysql.connect(**params)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {database}")
        yield {**params, "database": database}
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {database}")
        admin.close()


EXAMPLES = all_examples()


def test_there_are_examples() -> None:
    # The extraction itself: README.md alone has several.
    assert len([e for e in EXAMPLES if e.path.name == "README.md"]) >= 5


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example(
    example: Example,
    dsn: str,
    pg_schema: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    if example.fragment is not None:
        # Not run, but it must at least be Python.
        compile(example.code, example.name, "exec")
        return
    mysql = request.getfixturevalue("mysql_database") if uses_mysql(example.code) else None
    code = rewrite(example.code, dsn, pg_schema, mysql)
    left = _LEFT_OVER.search(code)
    assert left is None, (
        f"{example.name} names a server ({left.group(0) if left else ''}) that the test "
        "cannot point at the test databases: use postgresql://app@db/app or "
        'host="db", user="app", database="app" (CONTRIBUTING.md, "Examples")'
    )
    result = run_code(code, example.name, tmp_path)
    assert result.returncode == 0, (
        f"{example.name} failed (mark it <!-- example: fragment (why) --> only if it "
        f"cannot run on its own):\n{result.output}"
    )


# ---------------------------------------------- the harness catches what it must


def _md(tmp_path: Path, text: str) -> list[Example]:
    path = tmp_path / "page.md"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return extract(path)


def test_extract_finds_python_blocks_and_marks(tmp_path: Path) -> None:
    examples = _md(
        tmp_path,
        """\
        # Page

        ```python
        print(1)
        ```

        ```sh
        echo not python
        ```

        <!-- example: fragment (continues the block above) -->

        ```py
        print(2)
        ```

        - a list item:

          ```python
          print(3)
          ```
        """,
    )
    assert [(e.line, e.code, e.fragment) for e in examples] == [
        (3, "print(1)\n", None),
        (13, "print(2)\n", "continues the block above"),
        (19, "print(3)\n", None),
    ]


@pytest.mark.parametrize(
    "mark",
    ["<!-- example: fragment -->", "<!-- example: fragment () -->", "<!-- example: skip (x) -->"],
)
def test_a_mark_needs_a_reason_and_a_known_kind(tmp_path: Path, mark: str) -> None:
    with pytest.raises(MarkError):
        _md(tmp_path, f"{mark}\n```python\nprint(1)\n```\n")


def test_rewrite_points_examples_at_the_test_databases() -> None:
    code = textwrap.dedent(
        """\
        a = "postgresql://app@db/app"
        b = "postgresql+psycopg://app@db/app"
        c = "postgresql+asyncpg://app@db/app"
        d = "postgresql://app@bouncer:6432/app"
        e = dict(host="db", user="app", database="app")
        """
    )
    mysql = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": "", "database": "d1"}
    out = rewrite(code, "postgresql://postgres@127.0.0.1:5432/test", "s1", mysql)
    option = "options=-c%20search_path%3Ds1"
    assert out == textwrap.dedent(
        f"""\
        a = "postgresql://postgres@127.0.0.1:5432/test?{option}"
        b = "postgresql+psycopg://postgres@127.0.0.1:5432/test?{option}"
        c = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        d = "postgresql://postgres@127.0.0.1:5432/test?{option}"
        e = dict(host='127.0.0.1', port=3306, user='root', password='', database='d1')
        """
    )
    assert _LEFT_OVER.search(out) is None
    assert _LEFT_OVER.search('connect("postgresql://app@db:5432/other")') is not None


def test_a_test_dsn_with_a_query_keeps_it() -> None:
    url = pg_url("postgresql://u@h:1/d?sslmode=disable", "postgresql", "s")
    assert url == "postgresql://u@h:1/d?sslmode=disable&options=-c%20search_path%3Ds"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("raise SystemExit('boom')", "boom"),
        ("1 / 0", "ZeroDivisionError"),
        (
            # A pool never closed: its threads keep running.
            "import sqlite3, pypool\n"
            "pool = pypool.Pool(lambda: sqlite3.connect(':memory:', check_same_thread=False),"
            " min_size=1)\n"
            "pool.open(wait=True, timeout=30)\n",
            "a pool was left open",
        ),
        (
            # A connection dropped unclosed.
            "class Conn:\n"
            "    def __del__(self):\n"
            "        import warnings\n"
            "        warnings.warn('unclosed connection', ResourceWarning)\n"
            "conn = Conn()\n",
            "ResourceWarning: unclosed connection",
        ),
        (
            # An asyncio example that defines its coroutine and never runs it.
            "import asyncio\nasync def main():\n    await asyncio.sleep(0)\n",
            "coroutine functions never run (asyncio.run(...) them): ['main']",
        ),
        (
            "import asyncio\nasync def main():\n    await asyncio.sleep(0)\nmain()\n",
            "was never awaited",
        ),
    ],
    ids=[
        "exit",
        "exception",
        "pool-left-open",
        "unclosed-connection",
        "coroutine-never-run",
        "coroutine-never-awaited",
    ],
)
def test_the_runner_fails_what_it_must(tmp_path: Path, code: str, expected: str) -> None:
    result = run_code(code, "page.md:1", tmp_path, grace=1.0)
    assert result.returncode != 0
    assert expected in result.output


def test_the_runner_stops_an_example_that_hangs(tmp_path: Path) -> None:
    result = run_code(
        "print('started', flush=True)\nwhile True: pass\n", "page.md:1", tmp_path, timeout=5
    )
    assert result.returncode == -1
    assert "timed out after 5 s" in result.output and "started" in result.output


@pytest.mark.parametrize(
    "code",
    [
        """\
        import sqlite3
        import pypool

        pool = pypool.Pool(lambda: sqlite3.connect(":memory:", check_same_thread=False))
        with pool.connection() as conn:
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        pool.close()
        """,
        """\
        import asyncio

        async def answer():
            await asyncio.sleep(0)
            return 42

        async def main():
            assert await answer() == 42

        asyncio.run(main())
        """,
    ],
    ids=["threads", "asyncio"],
)
def test_the_runner_passes_a_complete_example(tmp_path: Path, code: str) -> None:
    result = run_code(textwrap.dedent(code), "page.md:1", tmp_path)
    assert result.returncode == 0, result.output
