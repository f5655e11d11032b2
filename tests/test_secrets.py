"""No part of a password reaches what pypool writes, logs, raises or shows.

A malformed DSN makes a driver repeat pieces of it: libpq answers
``password=h1dd3n-Pw Qx9Tail`` (an unquoted space) with ``missing "=" after
"Qx9Tail"``, and PyMySQL puts a password it cannot encode into its
``UnicodeEncodeError``. Each test here gives pypool a password made of
:data:`PIECES`, with real drivers (psycopg, PyMySQL), and looks for either
piece in every log record (all levels, tracebacks included), in every
exception raised (message, args, repr, notes and the whole
``__cause__``/``__context__`` chain) and in the reprs, for malformed and
well-formed DSNs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import traceback
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

import pypool
from pypool import cli, dbapi
from pypool.dbapi import mask_dsn

#: Every form of the password below holds one of these (whole, escaped,
#: percent-encoded or cut into words): neither may appear anywhere.
PIECES = ("h1dd3n", "Qx9Tail")
PASSWORD = "h1dd3n-Pw Qx9Tail"


def dead_port() -> int:
    """A loopback port nobody listens on: a connect there is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


DEAD = dead_port()

#: DSNs libpq rejects, each with a password it would echo a piece of.
MALFORMED = {
    "kv-unquoted-space": f"host=127.0.0.1 user=postgres password={PASSWORD} dbname=test",
    "kv-unquoted-space-last": f"host=127.0.0.1 user=postgres password={PASSWORD}",
    "kv-unterminated-quote": f"host=127.0.0.1 password='{PASSWORD} dbname=test",
    "kv-option-after": f"host=127.0.0.1 password={PASSWORD}=x dbname=test",
    "url-space": f"postgresql://postgres:{PASSWORD}@127.0.0.1/test",
    "url-bad-percent": "postgresql://postgres:h1dd3n%zzQx9Tail@127.0.0.1/test",
    "url-ipv6": "postgresql://postgres:h1dd3n-Qx9Tail@[::1/test",
    "url-query-space": f"postgresql://127.0.0.1/test?password={PASSWORD}",
    "url-query-bad-percent": "postgresql://127.0.0.1/test?password=h1dd3n%zzQx9Tail",
}
#: DSNs libpq accepts, to a port that refuses.
WELL_FORMED = {
    "url-percent-encoded": f"postgresql://postgres:h1dd3n%20Pw%40Qx9Tail@127.0.0.1:{DEAD}/test",
    "kv-quoted": f"host=127.0.0.1 port={DEAD} password='{PASSWORD}' dbname=test",
    "kv-escaped": f"host=127.0.0.1 port={DEAD} password=h1dd3n\\ Qx9Tail dbname=test",
}
DSNS = {**MALFORMED, **WELL_FORMED}


# ------------------------------------------------------------------ looking


def chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and the members of groups."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


def texts_of(exc: BaseException | None) -> str:
    """Everything an exception can show: each of its chain's message, args,
    repr and notes, and the traceback that logging would print."""
    parts = []
    for e in chain(exc):
        parts += [str(e), repr(e), repr(e.args), *map(str, getattr(e, "__notes__", []))]
        for attr in ("object", "strerror", "filename", "filename2"):
            parts.append(repr(getattr(e, attr, None)))
    if exc is not None:
        parts += traceback.format_exception(type(exc), exc, exc.__traceback__)
    return "\n".join(parts)


def leaks(text: str) -> list[str]:
    return [piece for piece in PIECES if piece in text]


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every record, formatted with its traceback, and its message."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return (
        "\n".join(f"{formatter.format(r)}\n{r.getMessage()}" for r in caplog.records) + caplog.text
    )


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


# ------------------------------------------------------------------ mask_dsn


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "host=h password=s3cr3t XYZ dbname=x",
            "host=h password=*** dbname=x",
        ),
        ("host=h password=s3cr3t XYZ", "host=h password=***"),
        ("'host=h password=s3cr3t XYZ W'", "'host=h password=***'"),
        ("host=h password=a b&sslmode=x", "host=h password=***&sslmode=x"),
        (
            "postgresql://u:s3cr3t XYZ@h/db",
            "postgresql://u:***@h/db",
        ),
        ("host=h password=s3cr3t XYZ\nDETAIL: x", "host=h password=***\nDETAIL: x"),
        ("PWD=s3cr3t XYZ;UID=u", "PWD=***;UID=u"),
        # prose after a password keeps its words...
        (
            'could not use "host=h password=pw": refused',
            'could not use "host=h password=*** refused',
        ),
        # ...and a URL without a password is not taken for one
        (
            "postgresql://h:5432/db failed for user@example",
            "postgresql://h:5432/db failed for user@example",
        ),
    ],
)
def test_mask_dsn_masks_a_malformed_password_whole(text: str, expected: str) -> None:
    assert mask_dsn(text) == expected


# ------------------------------------------------------------------ Secrets


def test_secrets_find_every_form_of_password() -> None:
    secrets = dbapi.Secrets(
        "postgresql://u:p%20one%40two@h/db?sslpassword=s%3Dthree",
        "host=h password='four \\' five' sslpassword=six seven dbname=x",
        dsn="postgresql://u@h/db?password=eight nine&x=1",
        password="ten eleven",
        passwd=b"twelve",
        user="thirteen",
    )
    text = secrets.mask(
        "p%20one%40two | p one@two | one@two | s=three | s%3Dthree | four ' five | five |"
        " six seven | seven | eight nine | nine | ten eleven | eleven | twelve | thirteen"
    )
    assert text == (
        "*** | *** | *** | *** | *** | *** | *** | *** | *** | *** | *** | *** | *** | *** |"
        " thirteen"
    )


def test_secrets_mask_short_pieces_only_standalone() -> None:
    secrets = dbapi.Secrets(password="longer ab")
    assert secrets.mask('after "ab" and abc, cab and ab') == 'after "***" and abc, cab and ***'
    assert secrets.mask("longerlonger") == "******"


def test_secrets_repr_shows_nothing() -> None:
    assert PIECES[0] not in repr(dbapi.Secrets(password=PASSWORD))
    assert not dbapi.Secrets("host=h dbname=x", user="u")
    assert dbapi.Secrets(password="x")


def test_secrets_scrub_the_whole_chain_in_place() -> None:
    unencodable = f"pässwörd€ {PASSWORD}"
    first = UnicodeEncodeError("latin-1", unencodable, 8, 9, "ordinal not in range(256)")
    second = OSError(5, f"no {PASSWORD}", f"/tmp/{PIECES[1]}")
    second.__context__ = first
    outer = RuntimeError(f"bad: {PASSWORD}", {"password": [PASSWORD.encode()]})
    outer.__cause__ = second
    if hasattr(outer, "add_note"):  # Python 3.11+
        outer.add_note(f"note {PASSWORD.split()[0]}")
    assert leaks(texts_of(outer)), "the test would show a leak"
    before = [type(e) for e in chain(outer)]

    assert dbapi.Secrets(password=unencodable).scrub(outer) is outer
    assert leaks(texts_of(outer)) == []
    assert [type(e) for e in chain(outer)] == before, "the same exceptions, scrubbed"
    assert str(outer) == "('bad: *** ***', {'password': [b'*** ***']})"
    assert str(second) == "[Errno 5] no *** ***: '/tmp/***'"
    assert len(first.object) == len(unencodable), "positions in the object stay valid"
    assert str(first).startswith("'latin-1' codec can't encode character")


def test_secrets_of_a_factory() -> None:
    def connect(*args: Any, **kwargs: Any) -> None:
        pass

    dsn = f"host=h password={PASSWORD}"
    assert dbapi.Secrets.of(dbapi.connect_factory(connect, dsn)).mask(PIECES[1]) == "***"
    assert dbapi.Secrets.of(functools.partial(connect, dsn)).mask(PIECES[1]) == "***"
    inner = functools.partial(connect, password=PASSWORD)
    assert dbapi.Secrets.of(functools.partial(inner, "x")).mask(PIECES[1]) == "***"
    assert dbapi.Secrets.of(lambda: None).mask(PIECES[1]) == PIECES[1]


# ------------------------------------------------------------------ psycopg


def _psycopg() -> ModuleType:
    return pytest.importorskip("psycopg")


def _call(fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError(f"{fn!r} did not fail")


@pytest.mark.parametrize("dsn", DSNS.values(), ids=DSNS.keys())
def test_connect_factory_psycopg(dsn: str) -> None:
    psycopg = _psycopg()
    factory = dbapi.connect_factory(psycopg.connect, dsn, connect_timeout=2)
    assert leaks(repr(factory)) == []
    error = _call(factory)
    assert isinstance(error, psycopg.Error)
    assert leaks(texts_of(error)) == []


def test_connect_factory_psycopg_keywords() -> None:
    psycopg = _psycopg()
    factory = dbapi.connect_factory(
        psycopg.connect, f"host=127.0.0.1 port={DEAD} dbname=test", password=PASSWORD, bogus="1"
    )
    assert leaks(repr(factory)) == []
    assert leaks(texts_of(_call(factory))) == []


def _pool_failures(pool: pypool.Pool) -> str:
    """What a pool that cannot connect tells its callers."""
    try:
        failed = _call(lambda: pool.wait(timeout=5.0, fail_fast=True))
        assert isinstance(failed, pypool.ConnectionFailed)
        assert failed.__cause__ is not None, "the driver's error is kept"
        timed_out = _call(lambda: pool.acquire(timeout=0.2))
        assert isinstance(timed_out, pypool.PoolTimeout)
        return texts_of(failed) + texts_of(timed_out) + repr(pool)
    finally:
        pool.close()


@pytest.mark.db
@pytest.mark.parametrize(
    "dsn",
    [MALFORMED["kv-unquoted-space"], MALFORMED["url-space"], MALFORMED["url-ipv6"]],
    ids=["kv-unquoted-space", "url-space", "url-ipv6"],
)
def test_pool_psycopg(dsn: str, core_module: ModuleType, logs: pytest.LogCaptureFixture) -> None:
    psycopg = _psycopg()
    factory = dbapi.connect_factory(psycopg.connect, dsn)
    pool = pypool.Pool.with_core(core_module)(factory, min_size=1)
    shown = _pool_failures(pool)
    assert "connection failed" in logs.text, "the failure is logged"
    assert leaks(shown) == []
    assert leaks(log_text(logs)) == []


@pytest.mark.db
def test_pool_psycopg_partial(core_module: ModuleType, logs: pytest.LogCaptureFixture) -> None:
    """A factory that is a ``functools.partial`` of the driver's connect."""
    psycopg = _psycopg()
    factory = functools.partial(psycopg.connect, MALFORMED["kv-unquoted-space"])
    shown = _pool_failures(pypool.Pool.with_core(core_module)(factory, min_size=1))
    assert leaks(shown) == []
    assert leaks(log_text(logs)) == []


@pytest.mark.db
@pytest.mark.parametrize("kind", ["sync", "null", "async"])
@pytest.mark.parametrize(
    ("conninfo", "kwargs"),
    [
        (MALFORMED["kv-unquoted-space"], None),
        (MALFORMED["url-bad-percent"], None),
        (f"host=127.0.0.1 port={DEAD} dbname=test", {"password": PASSWORD, "bogus": "1"}),
        (lambda: MALFORMED["url-space"], None),  # rotating credentials
    ],
    ids=["kv-unquoted-space", "url-bad-percent", "kwargs", "callable"],
)
def test_psycopg_pools(
    kind: str,
    conninfo: str | Callable[[], str],
    kwargs: dict[str, str] | None,
    core_module: ModuleType,
    logs: pytest.LogCaptureFixture,
) -> None:
    _psycopg()
    from pypool import psycopg as pp

    if kind == "async":
        shown = asyncio.run(_async_pool_failures(pp, conninfo, kwargs, core_module))
    else:
        cls = pp.ConnectionPool if kind == "sync" else pp.NullConnectionPool
        pool = cls.with_core(core_module)(
            conninfo, kwargs=kwargs, min_size=1 if kind == "sync" else 0, open=False
        )
        try:
            pool.open()
            error = _first_failed_connect(lambda: pool.getconn(timeout=0.3))
            assert isinstance(error, pp.PoolTimeout)
            waited = _call(lambda: pool.wait(timeout=0.3))
            assert isinstance(waited, pp.PoolTimeout)
            assert waited.__cause__ is not None
            shown = texts_of(error) + texts_of(waited) + repr(pool) + repr(pool._settings.factory)
        finally:
            pool.close()
    assert any("connection failed" in r.getMessage() for r in logs.records)
    assert leaks(shown) == []
    assert leaks(log_text(logs)) == []


def _first_failed_connect(getconn: Callable[[], Any]) -> BaseException:
    """The error of ``getconn()`` once a connect has failed: the caller that
    times out before the first connect ended gets no cause (a loaded machine
    may be slow to run the connect)."""
    for _ in range(30):
        error = _call(getconn)
        if error.__cause__ is not None:
            break
    return error


async def _async_pool_failures(
    pp: ModuleType,
    conninfo: str | Callable[[], str],
    kwargs: dict[str, str] | None,
    core_module: ModuleType,
) -> str:
    pool = pp.AsyncConnectionPool.with_core(core_module)(
        conninfo, kwargs=kwargs, min_size=1, open=False
    )
    try:
        await pool.open()
        error: BaseException | None = None
        for _ in range(30):  # until a connect has failed (a loaded machine may be slow)
            try:
                await pool.getconn(timeout=0.3)
            except pp.PoolTimeout as exc:
                error = exc
            if error is not None and error.__cause__ is not None:
                break
        assert isinstance(error, pp.PoolTimeout)
        try:
            await pool.wait(timeout=0.3)
        except pp.PoolTimeout as exc:
            waited: BaseException = exc
        else:
            raise AssertionError("wait() did not fail")
        assert error is not None and waited.__cause__ is not None
        return texts_of(error) + texts_of(waited) + repr(pool) + repr(pool._settings.factory)
    finally:
        await pool.close()


# ------------------------------------------------------------------ PyMySQL


@pytest.fixture(scope="module")
def mysql() -> dict[str, Any]:
    from _support.databases import mysql_params

    return mysql_params()


@pytest.mark.db
@pytest.mark.parametrize(
    "password",
    [f"pässwörd€ {PASSWORD}", PASSWORD],
    ids=["unencodable", "wrong"],
)
def test_pymysql(
    password: str,
    mysql: dict[str, Any],
    core_module: ModuleType,
    logs: pytest.LogCaptureFixture,
) -> None:
    """PyMySQL puts a password it cannot encode into its error's args; a
    wrong one is refused by the server."""
    pymysql = pytest.importorskip("pymysql")
    params = {**mysql, "user": "pypool_no_such_user", "password": password}
    factory = dbapi.connect_factory(pymysql.connect, **params, connect_timeout=5)
    assert leaks(repr(factory)) == []
    error = _call(factory)
    assert leaks(texts_of(error)) == []
    shown = _pool_failures(pypool.Pool.with_core(core_module)(factory, min_size=1))
    assert leaks(shown) == []
    assert leaks(log_text(logs)) == []


# ------------------------------------------------------------------ the CLI


@pytest.mark.parametrize(
    "dsn",
    [MALFORMED["kv-unquoted-space"], MALFORMED["url-space"]],
    ids=["kv-unquoted-space", "url-space"],
)
def test_cli_sweep(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    _psycopg()
    assert cli.main(["sweep", "--dsn", dsn, "--seconds", "0.2"]) != 0
    out, err = capsys.readouterr()
    assert "cannot connect" in err
    assert leaks(out + err) == []


def test_cli_bench(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _psycopg()
    from pypool.cli import peers as _bench_peers

    monkeypatch.setattr(_bench_peers, "DSN", None)  # the command sets it: put it back after
    dsn = MALFORMED["kv-unquoted-space"]
    contenders = "queue,pool-native-pg"
    cli.main(["bench", "--quick", "--rounds", "1", "--threads", "1",
              "--contenders", contenders, "--dsn", dsn])  # fmt: skip
    out, err = capsys.readouterr()
    assert "failed with a query" in out + err
    assert leaks(out + err) == []


def test_cli_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A DSN given without ``--dsn`` is echoed back as an unknown argument."""
    assert cli.main(["sweep", MALFORMED["kv-unquoted-space"]]) != 0
    out, err = capsys.readouterr()
    assert "unrecognized arguments" in err
    assert leaks(out + err) == []
