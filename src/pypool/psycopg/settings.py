"""Every keyword of the psycopg pools, once.

:data:`PSYCOPG_SETTINGS` is the one table of the keyword arguments of
``ConnectionPool``, ``AsyncConnectionPool``, ``NullConnectionPool`` and
``AsyncNullConnectionPool``: psycopg_pool's names, in psycopg_pool's order,
with psycopg_pool's defaults, then pypool's ``transaction_pooling``. A row
that feeds a setting of :data:`pypool.pool.SETTINGS` of the same meaning
names it, and takes its bounds and meaning (and, in the pool, its
validation) from that row; a psycopg-only row (``conninfo``, ``open``,
``close_returns``...) says its own. The pools' ``__signature__``, the
"Settings" section of their docstrings and the keywords they accept come
from here; pypool's other settings (:data:`OPTIONS`, such as ``lifo``) are
accepted too, as ``**options``, and checked by ``SETTINGS`` as
:class:`pypool.Pool` checks them.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from ..pool.settings import SETTINGS, Setting, refuse_unknown

__all__ = [
    "OPTIONS",
    "OPTION_DEFAULTS",
    "PSYCOPG_SETTINGS",
    "PsycopgSetting",
    "defaults",
    "docstring_section",
    "signature",
    "take_keywords",
]

_PYPOOL: Final = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class PsycopgSetting:
    """One keyword argument of the psycopg pools."""

    #: The keyword (psycopg_pool's).
    name: str
    #: Its default (psycopg_pool's, for ``ConnectionPool``).
    default: Any
    #: Its type, as written in the signature.
    annotation: str
    #: The setting of :data:`pypool.pool.SETTINGS` it feeds, of the same
    #: meaning; None for a psycopg-only keyword.
    feeds: str | None = None
    #: A psycopg-only keyword's bounds, in words; for a mapped one, what
    #: psycopg_pool adds to the pypool setting's bounds.
    bound_note: str = ""
    #: A psycopg-only keyword's meaning; for a mapped one, what psycopg_pool
    #: adds to the pypool setting's meaning.
    doc_note: str = ""

    @property
    def setting(self) -> Setting | None:
        """The row of :data:`pypool.pool.SETTINGS` this keyword feeds."""
        return None if self.feeds is None else _PYPOOL[self.feeds]

    @property
    def bound(self) -> str:
        """Its bounds, in words."""
        return self._joined("bound", self.bound_note, ", ")

    @property
    def doc(self) -> str:
        """Its meaning."""
        return self._joined("doc", self.doc_note, "; ")

    def _joined(self, field: str, note: str, separator: str) -> str:
        """The pypool setting's ``field``, then ``note`` (only ``note`` for a
        psycopg-only keyword)."""
        setting = self.setting
        if setting is None:
            return note
        return separator.join(text for text in (getattr(setting, field), note) if text)


#: Every keyword of the psycopg pools, in the order of their signatures
#: (``conninfo`` is also positional).
PSYCOPG_SETTINGS: Final[tuple[PsycopgSetting, ...]] = (
    PsycopgSetting(
        "conninfo",
        "",
        "str | Callable[[], str]",
        bound_note="a str, or a callable returning one",
        doc_note="the connection string; a callable is called again for every new connection "
        "(rotating credentials)",
    ),
    PsycopgSetting(
        "connection_class",
        psycopg.Connection,
        "type",
        bound_note="a psycopg connection class",
        doc_note="what ``connection_class.connect(conninfo, **kwargs)`` makes "
        "(``psycopg.AsyncConnection`` for the async pools)",
    ),
    PsycopgSetting(
        "kwargs",
        None,
        "Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None",
        bound_note="a mapping, a callable returning one, or None",
        doc_note="keyword arguments of every connect; a callable is called again for every "
        "new connection",
    ),
    PsycopgSetting("min_size", 4, "int", "min_size", "0 for a null pool"),
    PsycopgSetting(
        "max_size",
        None,
        "int | None",
        "max_size",
        "or None (= min_size; a null pool: 0 or None, no limit)",
    ),
    PsycopgSetting(
        "open",
        None,
        "bool | None",
        bound_note="True, False or None",
        doc_note="True: open now; False: ``open()`` later; None: open now (the async pools: "
        "at first use), with psycopg_pool's deprecation warning unless the pool is used as "
        "a context manager",
    ),
    PsycopgSetting(
        "configure",
        None,
        "Callable[[Any], object] | None",
        "configure",
        doc_note="it must leave the connection idle (async pools: it may be a coroutine function)",
    ),
    PsycopgSetting(
        "check",
        None,
        "Callable[[Any], object] | None",
        "check",
        doc_note="a check given runs at every hand-out, as psycopg_pool's (``check_after`` "
        "then defaults to 0)",
    ),
    PsycopgSetting(
        "reset",
        None,
        "Callable[[Any], object] | None",
        bound_note="a callable or None",
        doc_note="``reset(conn)`` on every return, after an open transaction is rolled back; "
        "it must leave the connection idle, else the connection is discarded",
    ),
    PsycopgSetting("name", None, "str | None", "name"),
    PsycopgSetting(
        "close_returns",
        False,
        "bool",
        bound_note="True or False",
        doc_note="``conn.close()`` returns the connection to the pool instead of closing it "
        "(always False for a null pool)",
    ),
    PsycopgSetting("timeout", 30.0, "float", "timeout"),
    PsycopgSetting("max_waiting", 0, "int", "max_waiting"),
    PsycopgSetting("max_lifetime", 3600.0, "float", "max_lifetime"),
    PsycopgSetting("max_idle", 600.0, "float", "max_idle"),
    PsycopgSetting("reconnect_timeout", 300.0, "float", "reconnect_timeout"),
    PsycopgSetting("reconnect_failed", None, "Callable[[Any], object] | None", "reconnect_failed"),
    PsycopgSetting(
        "num_workers",
        3,
        "int",
        "num_workers",
        doc_note="given or not, lowered to ``max_size`` on a smaller pool",
    ),
    PsycopgSetting("transaction_pooling", False, "bool", "transaction_pooling"),
)

_NAMES: Final = frozenset(s.name for s in PSYCOPG_SETTINGS)

#: pypool's settings the psycopg pools take besides their own (``**options``),
#: checked by :data:`pypool.pool.SETTINGS`: every one no keyword above has
#: the name of, but ``adapter`` (the pools' own: psycopg knowledge).
OPTIONS: Final[tuple[str, ...]] = tuple(
    s.name for s in SETTINGS if s.name not in _NAMES and s.name != "adapter"
)

#: The defaults of :data:`OPTIONS` that differ from pypool's. ``lifo``:
#: psycopg_pool's order, round-robin. With autocommit off, reusing the
#: connection that has just committed costs time on the server side:
#: ``SELECT 1`` through ``connection()`` measured 0.83-0.93x psycopg_pool
#: with LIFO, 1.07-1.20x round-robin (benchmarks/psycopg_select1.py).
OPTION_DEFAULTS: Final[Mapping[str, Any]] = {"lifo": False}


def defaults(connection_class: type = psycopg.Connection, *, null: bool = False) -> dict[str, Any]:
    """Every keyword's default for a pool making ``connection_class``
    connections (a null pool's ``min_size`` is 0)."""
    values = {s.name: s.default for s in PSYCOPG_SETTINGS}
    values["connection_class"] = connection_class
    if null:
        values["min_size"] = 0
    return values


def take_keywords(owner: str, given: Mapping[str, Any]) -> None:
    """Raises ``TypeError`` naming ``owner`` (the public class) for a keyword
    of ``given`` the psycopg pools do not take, with the closest one as a
    suggestion."""
    refuse_unknown(owner, given, [*_NAMES, *OPTIONS])


def signature(
    connection_class: type = psycopg.Connection, *, null: bool = False, method: bool = False
) -> inspect.Signature:
    """The signature of a psycopg pool class: ``conninfo``, every other
    keyword as keyword-only with its default, then ``**options`` (after
    ``self`` for the ``__init__`` method, with ``method``)."""
    values = defaults(connection_class, null=null)
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("self", positional)] if method else []
    params += [
        inspect.Parameter(
            s.name,
            positional if s is PSYCOPG_SETTINGS[0] else inspect.Parameter.KEYWORD_ONLY,
            default=values[s.name],
            annotation=s.annotation,
        )
        for s in PSYCOPG_SETTINGS
    ]
    params.append(inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD, annotation="Any"))
    return inspect.Signature(params, return_annotation=inspect.Signature.empty)


def docstring_section(
    connection_class: type = psycopg.Connection, *, null: bool = False, indent: str = "    "
) -> str:
    """The "Settings" section of a psycopg pool class's docstring: each
    keyword, its default, its bounds and its meaning, then pypool's other
    settings it takes."""
    values = defaults(connection_class, null=null)
    lines = [
        "Settings (keyword arguments; the table is "
        ":data:`pypool.psycopg.settings.PSYCOPG_SETTINGS`):",
        "",
    ]
    for s in PSYCOPG_SETTINGS:
        default = values[s.name]
        shown = (
            f"{default.__module__}.{default.__qualname__}"
            if isinstance(default, type)
            else repr(default)
        )
        lines.append(f"- ``{s.name}={shown}`` ({s.bound}): {s.doc}.")
    options = ", ".join(
        f"``{name}={OPTION_DEFAULTS.get(name, _PYPOOL[name].default)!r}``" for name in OPTIONS
    )
    lines += ["", f"And pypool's {options} (:data:`pypool.pool.SETTINGS`)."]
    return "\n".join(f"{indent}{line}" if line else "" for line in lines)
