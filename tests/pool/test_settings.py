"""The settings table (``pypool.pool.settings.SETTINGS``) against the pools.

Every pool class takes its keywords, defaults and bounds from the table: its
signature and docstring are checked against it, an unknown keyword's error
names the public class, every bound in the table is tried at its edges (just
inside accepted, just outside refused with a :class:`ConfigurationError`
naming the argument), ``run()`` checks its arguments before it touches a
connection, and the documentation's settings table is checked against the
code. Both cores, both pools.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import pydoc
import re
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import pypool
from _support.fakes import NullAdapter
from pypool import AsyncPool, ConfigurationError, Pool
from pypool.pool.settings import MIN_LIFETIME, SETTINGS, session_state_reset

ROOT = Path(__file__).resolve().parents[2]
NAMES = [s.name for s in SETTINGS]


class Conn:
    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


class Factory:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Conn:
        self.calls += 1
        return Conn()


@pytest.fixture(params=["Pool", "AsyncPool"])
def pool_class(request: pytest.FixtureRequest, core_module: ModuleType) -> type:
    """Each public pool class, on the core under test."""
    public = Pool if request.param == "Pool" else AsyncPool
    return public.with_core(core_module)


def make(cls: type, **kw: Any) -> Any:
    kw.setdefault("adapter", NullAdapter())
    pool = cls(Factory(), **kw)
    pool_close(pool)
    return pool


def pool_close(pool: Any) -> None:
    if isinstance(pool, AsyncPool):
        asyncio.run(pool.close())
    else:
        pool.close()


# ------------------------------------------------------------------ signatures


@pytest.mark.parametrize("public", [Pool, AsyncPool], ids=["Pool", "AsyncPool"])
def test_signature_is_the_table(public: type, core_module: ModuleType) -> None:
    for cls in (public, public.with_core(core_module)):
        params = inspect.signature(cls).parameters
        assert list(params) == ["factory", *NAMES]
        for s in SETTINGS:
            assert params[s.name].kind is inspect.Parameter.KEYWORD_ONLY
            assert params[s.name].default == s.default or (params[s.name].default is s.default), (
                s.name
            )
        init = inspect.signature(cls.__init__).parameters
        assert list(init) == ["self", "factory", *NAMES]
        text = pydoc.render_doc(cls)
        for s in SETTINGS:
            assert f"{s.name}=" in text, f"help({public.__name__}) does not show {s.name}"
            assert f"``{s.name}={s.default!r}`` ({s.bound})" in (cls.__doc__ or "")


def test_with_core_is_a_real_subclass(core_module: ModuleType) -> None:
    for public in (Pool, AsyncPool):
        bound = public.with_core(core_module)
        assert issubclass(bound, public)
        assert bound is public.with_core(core_module)  # made once
        name = "python" if core_module.__name__.endswith("_py") else "native"
        assert bound is public.with_core(name)
        pool = make(bound)
        assert isinstance(pool, public)
        assert pool.core == name
    default = make(Pool)
    assert isinstance(default, Pool) and default.core == pypool.CORE


def test_with_core_keeps_a_subclass_attributes(core_module: ModuleType) -> None:
    class Mine(Pool):
        flavour = "mine"

        def hello(self) -> str:
            return f"hello from {self.name}"

    pool = make(Mine.with_core(core_module), name="m")
    assert isinstance(pool, Mine) and isinstance(pool, Pool)
    assert pool.flavour == "mine" and pool.hello() == "hello from m"
    assert list(inspect.signature(Mine).parameters) == ["factory", *NAMES]
    assert list(inspect.signature(Mine.with_core(core_module)).parameters) == ["factory", *NAMES]

    class Own(Mine):
        def __init__(self, dsn: str, *, size: int = 2) -> None:
            super().__init__(lambda: dsn, max_size=size)

    # A constructor of its own is what help() shows, on every Python (3.10's
    # inspect would otherwise take the base's __new__(*args, **kwargs)).
    assert list(inspect.signature(Own).parameters) == ["dsn", "size"]
    assert list(inspect.signature(Own.with_core(core_module)).parameters) == ["dsn", "size"]


@pytest.mark.parametrize("bad", ["fast", 3, None])
def test_with_core_refuses_what_is_not_a_core(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="core must be"):
        Pool.with_core(bad)


def test_defaults_are_the_table(pool_class: type) -> None:
    pool = make(pool_class, adapter=NullAdapter())
    settings = pool._settings
    for s in SETTINGS:
        if s.name in ("adapter", "name"):
            continue
        value = getattr(settings, s.name)
        expected = s.default
        if s.name == "num_workers":
            expected = min(s.default, settings.max_size)
        assert value == expected or (value is None and expected is None), s.name
    assert pool.timeout == 30.0 and pool.max_size == 10 and pool.min_size == 0
    assert settings.keepalive == 240.0 and settings.leak_timeout is None


def test_an_unknown_keyword_names_the_public_class(pool_class: type) -> None:
    public = pool_class.__name__
    with pytest.raises(TypeError) as info:
        pool_class(Factory(), maxsize=3)
    assert str(info.value) == (
        f"{public}() got an unexpected keyword argument 'maxsize'; did you mean 'max_size'?"
    )
    assert "_PoolMethods" not in str(info.value)
    with pytest.raises(TypeError, match=rf"^{public}\(\) got an unexpected keyword argument "
                       r"'_core'"):  # fmt: skip
        pool_class(Factory(), _core=None)
    with pytest.raises(TypeError, match=r"'zzz'$"):
        pool_class(Factory(), zzz=1)


# ------------------------------------------------------------------ bounds

ok_check = lambda conn: None  # noqa: E731


@session_state_reset
def clears_sessions(conn: Any) -> None:
    pass


#: For every setting: values just inside its bounds (accepted), and values
#: just outside (refused), each as the keywords to pass.
EDGES: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
    "adapter": ([{"adapter": NullAdapter()}], [{"adapter": object()}, {"adapter": Conn()}]),
    "min_size": (
        [{"min_size": 0}, {"min_size": 3, "max_size": 3}],
        [{"min_size": -1}, {"min_size": 4, "max_size": 3}, {"min_size": 1.0}],
    ),
    "max_size": ([{"max_size": 1}], [{"max_size": 0}, {"max_size": True}]),
    "timeout": (
        [{"timeout": 5e-324}, {"timeout": math.inf}, {"timeout": 10**300}],
        [
            {"timeout": 0},
            {"timeout": -5e-324},
            {"timeout": 10**400},
            {"timeout": math.nan},
            {"timeout": None},
            {"timeout": "30"},
        ],
    ),
    "max_waiting": ([{"max_waiting": 0}], [{"max_waiting": -1}]),
    "max_lifetime": (
        [{"max_lifetime": MIN_LIFETIME}, {"max_lifetime": None}, {"max_lifetime": math.inf}],
        [
            {"max_lifetime": math.nextafter(MIN_LIFETIME, 0)},
            {"max_lifetime": 1e-9},
            {"max_lifetime": 0},
            {"max_lifetime": -1},
            {"max_lifetime": 10**400},
        ],
    ),
    "max_idle": (
        [{"max_idle": 0}, {"max_idle": None}, {"max_idle": math.inf}],
        [{"max_idle": -5e-324}, {"max_idle": 10**400}],
    ),
    "max_uses": ([{"max_uses": 0}], [{"max_uses": -1}]),
    "check": (
        [{"check": None}, {"check": False}, {"check": ok_check}],
        [{"check": True}, {"check": "ping"}],
    ),
    "check_after": (
        [{"check_after": 0}, {"check_after": None}],
        [{"check_after": -5e-324}, {"check_after": 10**400}],
    ),
    "reset": (
        [{"reset": None}, {"reset": False}, {"reset": "rollback"}, {"reset": ok_check}],
        [{"reset": "roll back"}, {"reset": True}, {"reset": 1}],
    ),
    "configure": ([{"configure": None}, {"configure": ok_check}], [{"configure": False}]),
    "num_workers": (
        [{"num_workers": 1}, {"num_workers": 4, "max_size": 4}],
        [{"num_workers": 0}, {"num_workers": 5, "max_size": 4}, {"num_workers": 300}],
    ),
    "name": ([{"name": "orders"}, {"name": None}], [{"name": 1}]),
    "lifo": ([{"lifo": True}, {"lifo": False}], [{"lifo": 1}, {"lifo": None}]),
    "leak_timeout": (
        [{"leak_timeout": 5e-324}, {"leak_timeout": None}],
        [{"leak_timeout": 0}, {"leak_timeout": "1"}, {"leak_timeout": 10**400}],
    ),
    "keepalive": (
        [{"keepalive": 5e-324}, {"keepalive": None}],
        [{"keepalive": 0}, {"keepalive": "240"}],
    ),
    "reconnect_timeout": (
        [{"reconnect_timeout": 0}],
        [{"reconnect_timeout": -5e-324}, {"reconnect_timeout": None}],
    ),
    "reconnect_failed": (
        [{"reconnect_failed": None}, {"reconnect_failed": ok_check}],
        [{"reconnect_failed": 1}],
    ),
    "transaction_pooling": (
        [{"transaction_pooling": True}, {"transaction_pooling": False}],
        [
            {"transaction_pooling": 1},
            {"transaction_pooling": True, "reset": clears_sessions},
        ],
    ),
}


def test_every_setting_has_its_edges() -> None:
    assert sorted(EDGES) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_each_bound_at_its_edges(pool_class: type, name: str) -> None:
    inside, outside = EDGES[name]
    for kw in inside:
        make(pool_class, **kw)
    for kw in outside:
        with pytest.raises(ConfigurationError) as info:
            make(pool_class, **kw)
        message = str(info.value)
        assert isinstance(info.value, ValueError)
        assert name in message, f"{kw}: {message!r} does not name {name}"
        assert re.search(r"must|cannot", message), f"{kw}: {message!r} says nothing to change"


class NoClose:
    """An adapter without ``close()``."""

    def reset_for(self, conn: Any) -> None:
        return None

    def check(self, conn: Any) -> None:
        pass

    def is_broken(self, conn: Any, exc: Any = None) -> bool:
        return False


#: Refusals whose message says more than the setting's name (what it must
#: be, what to change), and values of other kinds than :data:`EDGES` tries.
BAD_SETTINGS: list[tuple[dict[str, Any], str]] = [
    ({"min_size": 5, "max_size": 2}, "lower min_size or raise max_size"),
    ({"max_size": 0}, "max_size must be >= 1"),
    ({"max_size": -3}, "max_size must be >= 1"),
    ({"max_size": 2.5}, "max_size must be an integer"),
    ({"max_size": "10"}, "max_size must be an integer"),
    ({"max_size": True}, "max_size must be an integer"),
    ({"timeout": 0}, "timeout must be > 0"),
    ({"timeout": -1.0}, "timeout must be > 0"),
    ({"timeout": "30"}, "timeout must be a number of seconds"),
    ({"timeout": None}, "timeout must be a number of seconds"),
    ({"max_lifetime": math.nan}, "max_lifetime"),
    ({"max_lifetime": "1h"}, "max_lifetime must be a number of seconds"),
    ({"max_idle": math.nan}, "max_idle"),
    ({"max_idle": "600"}, "max_idle must be a number of seconds"),
    ({"check_after": math.nan}, "check_after"),
    ({"check_after": "1s"}, "check_after must be a number of seconds"),
    ({"configure": "SET x"}, "configure must be a callable"),
    ({"check": 1}, "check must be a callable"),
    ({"check": True}, "check must be a callable"),
    ({"reset": 5}, "reset must be a callable"),
    ({"num_workers": 0}, "num_workers must be >= 1"),
    ({"num_workers": 1.5}, "num_workers must be an integer"),
    ({"max_waiting": -1}, "max_waiting must be >= 0"),
    ({"max_uses": -1}, "max_uses must be >= 0"),
    ({"adapter": object()}, "pass pypool.dbapi or another adapter"),
    ({"adapter": NoClose()}, "no close()"),
    ({"name": 42}, "name must be a str"),
    ({"lifo": 1}, "lifo must be True or False"),
    ({"lifo": "yes"}, "lifo must be True or False"),
    ({"leak_timeout": 0}, "leak_timeout must be > 0"),
    ({"leak_timeout": "1"}, "leak_timeout"),
    ({"keepalive": -1}, "keepalive must be > 0"),
    ({"reconnect_timeout": None}, "reconnect_timeout must be a number of seconds"),
]


@pytest.mark.parametrize(
    ("settings", "says"), BAD_SETTINGS, ids=[repr(s)[1:-1] for s, _ in BAD_SETTINGS]
)
def test_a_refusal_says_what_to_change(
    pool_class: type, settings: dict[str, Any], says: str
) -> None:
    factory = Factory()
    with pytest.raises(ConfigurationError) as info:
        pool_class(factory, **{"adapter": NullAdapter(), **settings})
    assert says in str(info.value)
    assert factory.calls == 0
    assert not any(
        t.name.startswith("pypool-pool-") and not t.daemon for t in threading.enumerate()
    )


def test_a_factory_that_is_not_a_callable_is_refused(pool_class: type) -> None:
    with pytest.raises(ConfigurationError, match="factory must be a callable"):
        pool_class(None, adapter=NullAdapter())
    with pytest.raises(ConfigurationError) as info:
        pool_class("postgresql://app@db/orders", adapter=NullAdapter())
    assert "connect_factory" in str(info.value)


def test_a_huge_timeout_is_no_overflow_error(pool_class: type) -> None:
    with pytest.raises(ConfigurationError, match=r"timeout .* math\.inf for no limit"):
        make(pool_class, timeout=10**400)


def test_num_workers_unset_follows_max_size(pool_class: type) -> None:
    assert make(pool_class, max_size=1)._settings.num_workers == 1
    assert make(pool_class, max_size=30)._settings.num_workers == 2
    with pytest.raises(ConfigurationError, match=r"num_workers \(2\) must not exceed max_size"):
        make(pool_class, max_size=1, num_workers=2)


def test_a_psycopg_pool_keeps_its_default_workers_on_a_small_pool() -> None:
    pytest.importorskip("psycopg")
    from pypool.psycopg import ConnectionPool

    pool = ConnectionPool("dbname=x", min_size=1, max_size=1, open=False)
    assert pool._settings.num_workers == 1  # psycopg_pool's 3, lowered to max_size


# ------------------------------------------------------------------ run()

BAD_RUNS = [
    {"retries": -1},
    {"retries": True},
    {"retries": 1.5},
    {"backoff": -1},
    {"backoff": -5e-324},
    {"backoff": "x"},
    {"backoff": True},
    {"backoff": math.nan},
    {"backoff": math.inf},
    {"backoff": 10**400},
    {"backoff": 1e300, "retries": 2},
]


@pytest.mark.parametrize("kw", BAD_RUNS, ids=[str(k) for k in BAD_RUNS])
def test_run_checks_its_arguments_before_any_connection(
    core_module: ModuleType, kw: dict[str, Any]
) -> None:
    (name, *_) = kw
    called: list[Any] = []
    factory = Factory()
    with Pool.with_core(core_module)(factory, adapter=NullAdapter()) as pool:
        with pytest.raises(ConfigurationError, match=name):
            pool.run(called.append, **kw)
        assert not called and factory.calls == 0 and pool.size == 0

    async def main() -> None:
        async with AsyncPool.with_core(core_module)(factory, adapter=NullAdapter()) as apool:

            async def fn(conn: Any) -> None:
                called.append(conn)

            with pytest.raises(ConfigurationError, match=name):
                await apool.run(fn, **kw)
            assert not called and factory.calls == 0 and apool.size == 0

    asyncio.run(main())


def test_run_accepts_the_edges(core_module: ModuleType) -> None:
    with Pool.with_core(core_module)(Factory(), adapter=NullAdapter()) as pool:
        assert pool.run(lambda conn: 1, retries=0, backoff=0) == 1
        assert pool.run(lambda conn: 2, retries=0, backoff=math.inf) == 2  # never sleeps
        assert pool.run(lambda conn: 3, retries=3, backoff=0.0) == 3


# ------------------------------------------------------------------ the docs


def documented_settings() -> dict[str, tuple[str, str]]:
    """The README's settings table (the documentation site includes it):
    setting -> (default, bounds)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("| setting | default | bounds | meaning |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0].strip("`")] = (cells[1].strip("`"), cells[2])
    return rows


def test_the_documented_table_is_the_code() -> None:
    documented = documented_settings()
    assert list(documented) == NAMES
    for s in SETTINGS:
        default, bound = documented[s.name]
        assert default == repr(s.default), s.name
        assert bound == s.bound, s.name
