"""The psycopg pools' keyword table (``pypool.psycopg.settings``) against the pools.

For ``ConnectionPool``, ``AsyncConnectionPool``, ``NullConnectionPool`` and
``AsyncNullConnectionPool``, public and bound to each core: what
``inspect.signature`` shows is the table, with its defaults; an unknown or
misspelt keyword is a ``TypeError`` naming the public class, with the closest
keyword (psycopg_pool's, or one of pypool's other settings) as a suggestion;
a value outside the bounds of a setting a keyword feeds is a
:class:`~pypool.ConfigurationError` naming the psycopg keyword; the
docstring's "Settings" section is the table; and
``docs/psycopg-migration.md`` states the table's defaults. (The comparison
with psycopg_pool's own signatures is ``test_psycopg_surface.py``'s; the
pypool settings' own edges are ``tests/pool/test_settings.py``'s.)
"""

from __future__ import annotations

import asyncio
import inspect
import pydoc
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("psycopg")

import pypool.psycopg as pp
from pypool import ConfigurationError
from pypool.pool.settings import SETTINGS
from pypool.psycopg.settings import (
    OPTION_DEFAULTS,
    OPTIONS,
    PSYCOPG_SETTINGS,
    defaults,
)

ROOT = Path(__file__).resolve().parents[3]
NAMES = ["ConnectionPool", "NullConnectionPool", "AsyncConnectionPool", "AsyncNullConnectionPool"]
PYPOOL = {s.name: s for s in SETTINGS}


def _defaults(cls: type) -> dict[str, Any]:
    import psycopg

    connection_class = psycopg.AsyncConnection if "Async" in cls.__name__ else psycopg.Connection
    return defaults(connection_class, null="Null" in cls.__name__)


def _make(cls: type, **kw: Any) -> Any:
    """A pool made with ``open=False`` (no connection, no thread), in a
    running loop for the async classes; closed if sync."""

    async def make() -> Any:
        return cls("", open=False, **kw)

    if "Async" in cls.__name__:
        return asyncio.run(make())
    pool = cls("", open=False, **kw)
    pool.close()
    return pool


@pytest.fixture(params=NAMES)
def public(request: pytest.FixtureRequest) -> type:
    cls: type = getattr(pp, request.param)
    return cls


# ------------------------------------------------------------------ signatures


def test_signature_is_the_table(public: type, core_module: ModuleType) -> None:
    expected = _defaults(public)
    for cls in (public, public.with_core(core_module)):  # type: ignore[attr-defined]
        params = inspect.signature(cls).parameters
        assert list(params) == [s.name for s in PSYCOPG_SETTINGS] + ["options"]
        kinds = [p.kind for p in params.values()]
        assert kinds[0] is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert set(kinds[1:-1]) == {inspect.Parameter.KEYWORD_ONLY}
        assert kinds[-1] is inspect.Parameter.VAR_KEYWORD
        for s in PSYCOPG_SETTINGS:
            default = params[s.name].default
            assert default == expected[s.name] and type(default) is type(expected[s.name]), s.name
        init = inspect.signature(cls.__init__).parameters
        assert list(init) == ["self", *params]
        assert [p.default for p in init.values()][1:] == [p.default for p in params.values()]


def test_the_table_keeps_psycopg_pool_defaults() -> None:
    # Only the null pools' min_size and the async connection class differ
    # by class; everything else is one default for the four.
    by_class = [_defaults(getattr(pp, name)) for name in NAMES]
    for s in PSYCOPG_SETTINGS:
        values = {repr(d[s.name]) for d in by_class}
        assert len(values) == (2 if s.name in ("min_size", "connection_class") else 1), s.name
    assert by_class[0]["min_size"] == 4 and by_class[1]["min_size"] == 0


# ------------------------------------------------------------------ keywords

#: A misspelt keyword -> the suggestion: psycopg_pool's keywords, pypool's
#: settings the pools take too, and those they do not (``adapter``: the
#: pools' own; ``_defer_open``: private).
MISSPELT = {
    "maxsize": "max_size",
    "conninf": "conninfo",
    "connection_klass": "connection_class",
    "close_return": "close_returns",
    "lifoo": "lifo",
    "keepalives": "keepalive",
    "adapter": None,
    "_defer_open": None,
}


@pytest.mark.parametrize("key", MISSPELT)
def test_an_unknown_keyword_names_the_public_class(
    public: type, core_module: ModuleType, key: str
) -> None:
    suggestion = MISSPELT[key]
    hint = f"; did you mean {suggestion!r}?" if suggestion else ""
    for cls in (public, public.with_core(core_module)):  # type: ignore[attr-defined]
        with pytest.raises(TypeError) as info:
            _make(cls, **{key: 1})
        assert str(info.value) == (
            f"{public.__name__}() got an unexpected keyword argument {key!r}{hint}"
        )


def test_pypool_settings_are_taken_as_options(public: type) -> None:
    assert set(OPTIONS) == {"max_uses", "check_after", "lifo", "leak_timeout", "keepalive"}
    pool = _make(public, lifo=True, max_uses=7, check_after=None, keepalive=60.0)
    assert pool._settings.lifo is True and pool._settings.max_uses == 7
    assert pool._settings.check_after is None and pool._settings.keepalive == 60.0
    assert _make(public)._settings.lifo is OPTION_DEFAULTS["lifo"] is False


# ------------------------------------------------------------------ bounds

#: For every keyword that feeds a pypool setting: values outside that
#: setting's bounds, which pypool's check refuses (``configure``'s is
#: psycopg_pool's: not checked when the pool is made, as psycopg_pool does
#: not; the pool wraps it).
OUTSIDE: dict[str, list[dict[str, Any]]] = {
    "min_size": [{"min_size": 1.5, "max_size": 2}],
    "max_size": [{"max_size": 4.5}, {"max_size": "4"}],
    "configure": [],
    "check": [{"check": True}, {"check": "ping"}],
    "name": [{"name": 1}],
    "timeout": [{"timeout": 0}, {"timeout": -1.0}, {"timeout": None}],
    "max_waiting": [{"max_waiting": -1}],
    "max_lifetime": [{"max_lifetime": 0.01}, {"max_lifetime": 0}],
    "max_idle": [{"max_idle": -1}],
    "reconnect_timeout": [{"reconnect_timeout": -1}, {"reconnect_timeout": None}],
    "reconnect_failed": [{"reconnect_failed": 1}],
    "num_workers": [{"num_workers": 0}, {"num_workers": 1.0}],
    "transaction_pooling": [{"transaction_pooling": 1}],
}
MAPPED = [s.name for s in PSYCOPG_SETTINGS if s.feeds is not None]


def test_every_mapped_keyword_has_its_edges() -> None:
    assert list(OUTSIDE) == MAPPED
    for s in PSYCOPG_SETTINGS:
        if s.feeds is not None:
            assert s.feeds == s.name  # the same meaning under the same name


@pytest.mark.parametrize("name", MAPPED)
def test_each_bound_names_the_keyword(public: type, name: str) -> None:
    for kw in OUTSIDE[name]:
        if "Null" in public.__name__ and kw.get("min_size"):
            continue  # psycopg_pool's rule speaks first: "null pools must have min_size = 0"
        with pytest.raises(ConfigurationError) as info:
            _make(public, **kw)
        message = str(info.value)
        assert re.match(rf"{name} must", message), f"{kw}: {message!r}"


# ------------------------------------------------------------------ docs


def test_the_docstring_section_is_the_table(public: type) -> None:
    expected = _defaults(public)
    doc = public.__doc__ or ""
    assert "Settings (keyword arguments; the table is" in doc
    lines = {line.split("=")[0]: line for line in doc.splitlines() if "- ``" in line}
    for s in PSYCOPG_SETTINGS:
        line = lines[f"    - ``{s.name}"]
        default = expected[s.name]
        assert (default.__qualname__ if isinstance(default, type) else repr(default)) in line
        assert line.endswith(f"`` ({s.bound}): {s.doc}."), line
        if s.feeds is not None:  # the pypool row's words, not a copy
            assert PYPOOL[s.feeds].bound in s.bound and PYPOOL[s.feeds].doc in s.doc
    for name in OPTIONS:
        assert f"``{name}=" in doc, name
    # help() shows it, on a class bound to a core too.
    shown_min = f"``min_size={expected['min_size']!r}``"
    assert shown_min in pydoc.render_doc(public.with_core("python"))  # type: ignore[attr-defined]


def test_the_migration_guide_states_the_defaults() -> None:
    text = (ROOT / "docs" / "psycopg-migration.md").read_text()
    constructor = text[text.index("- **Constructor**") : text.index("- **Opening and closing**")]
    stated = dict(re.findall(r"`(\w+)=(\w+)`", constructor))
    table = defaults()
    assert stated, "no `name=default` in the Constructor item"
    for name, value in stated.items():
        if value[0].isdigit():
            assert table[name] == float(value), name
        else:
            assert repr(table[name]) == value, name
    for s in PSYCOPG_SETTINGS[:-1]:  # psycopg_pool's keywords, each named
        assert f"`{s.name}" in constructor, s.name
    extras = " ".join(text[text.index("**Extra keywords.**") :].split())
    for name in OPTIONS:
        default = OPTION_DEFAULTS.get(name, PYPOOL[name].default)
        assert f"`{name}` ({default!r}" in extras, name
