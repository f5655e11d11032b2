"""The public surface of pypool.sqlalchemy's pools against SQLAlchemy's.

``pypool.sqlalchemy.QueuePool`` and ``AsyncAdaptedQueuePool`` subclass
SQLAlchemy's classes of the same names and replace their storage. These
tests compare, for the installed SQLAlchemy:

- the public names (methods, properties, attributes) and what kind of thing
  each is;
- ``inspect.signature`` of every public method and of ``__init__`` (which
  ``create_engine`` reads to route its ``pool_*`` arguments): parameter
  names, kinds and defaults. Annotations are not compared: they are strings
  written in each project's own style, and SQLAlchemy's say ``float`` for a
  timeout that may be None;
- every name SQLAlchemy's pool class itself defines (its storage: ``_do_get``,
  ``_do_return_conn``, ``dispose``, ``status``, ...): pypool must override
  each, or list it below as inherited on purpose. A name inherited silently
  would run SQLAlchemy's code against a queue that pypool's pools do not have.

Every difference must be listed in :data:`ALLOWED`, keyed by SQLAlchemy's
``major.minor`` version, with the reason. A SQLAlchemy version with no entry
fails the test, and so does a new name or signature in a listed one: a new
release is reviewed (and the entry added) before pypool claims to match it.
An entry that no longer matches a difference fails too, so the list stays
exact. ``docs/sqlalchemy.md`` describes the same differences.
"""

from __future__ import annotations

import pytest

sa = pytest.importorskip("sqlalchemy")
from sqlalchemy import pool as sa_pool  # noqa: E402

from _support.surface import Allowed, admitted_releases, allowed_for, differences, public  # noqa: E402
from pypool import sqlalchemy as pp  # noqa: E402

#: The public names of SQLAlchemy's QueuePool and AsyncAdaptedQueuePool in
#: the 2.0 and 2.1 releases, each reviewed against pypool's classes.
_SQLALCHEMY_2X_PUBLIC = {
    name: "reviewed"
    for name in (
        "checkedin",
        "checkedout",
        "connect",
        "dispatch",
        "dispose",
        "logging_name",
        "overflow",
        "recreate",
        "size",
        "status",
        "timeout",
    )
}

#: The public names only pypool's classes have.
_PYPOOL_ADDED = {
    "stats": "pypool's counters and gauges of the core (docs/sqlalchemy.md)",
    "with_core": "a subclass bound to one core module, for tests and benchmarks",
}

#: The differences of the 2.x releases pypool is tested with.
_ALLOWED_2X: dict[str, dict[str, dict[str, str]]] = {
    "QueuePool": {
        "public": _SQLALCHEMY_2X_PUBLIC,
        "added": _PYPOOL_ADDED,
        "signature": {},
        "inherited": {
            "_is_asyncio": "False, SQLAlchemy's meaning: not for asyncio engines",
            "_queue_class": "never used: pypool's __init__ makes no SQLAlchemy queue",
            "_inc_overflow": "never called: its only callers, _do_get and _do_return_conn, "
            "are pypool's own (the core counts the overflow)",
            "_dec_overflow": "never called, as _inc_overflow",
        },
    },
    "AsyncAdaptedQueuePool": {
        "public": _SQLALCHEMY_2X_PUBLIC,
        "added": _PYPOOL_ADDED,
        "signature": {},
        "inherited": {
            "_queue_class": "never used: pypool's __init__ makes no SQLAlchemy queue",
        },
    },
}

#: SQLAlchemy ``major.minor`` -> class name -> {"public", "added", "signature",
#: "inherited"} -> name -> why. ``public``: SQLAlchemy's public names, each
#: reviewed (a name a new release adds fails until it is); ``added``: public
#: names only pypool has;
#: ``signature``: public methods whose parameters deliberately differ;
#: ``inherited``: names SQLAlchemy's class itself defines that pypool keeps.
ALLOWED: Allowed = {
    "2.0": _ALLOWED_2X,
    "2.1": _ALLOWED_2X,
}

PAIRS = [
    pytest.param(pp.QueuePool, sa_pool.QueuePool, id="QueuePool"),
    pytest.param(
        pp.AsyncAdaptedQueuePool, sa_pool.AsyncAdaptedQueuePool, id="AsyncAdaptedQueuePool"
    ),
]


def _allowed(name: str) -> dict[str, dict[str, str]]:
    return allowed_for(ALLOWED, "SQLAlchemy", sa.__version__, "pypool.sqlalchemy", name)


def _defined_by(cls: type, name: str) -> type:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass
    raise AssertionError(f"{cls.__name__}.{name} is defined nowhere")


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_public_names(ours: type, theirs: type) -> None:
    allowed = _allowed(theirs.__name__)
    assert public(theirs) == set(allowed["public"]), "SQLAlchemy's public names changed"
    assert public(theirs) - public(ours) == set(), "SQLAlchemy names pypool lacks"
    assert public(ours) - public(theirs) == set(allowed["added"])


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_kinds_and_signatures(ours: type, theirs: type) -> None:
    allowed = _allowed(theirs.__name__)
    differ = differences(ours, theirs, public(theirs))
    assert set(differ) == set(allowed["signature"]), differ


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_storage_is_pypools(ours: type, theirs: type) -> None:
    # Every name SQLAlchemy's class defines (beyond the dunders) is pypool's
    # own, or inherited on purpose.
    allowed = _allowed(theirs.__name__)
    names = {n for n in vars(theirs) if not (n.startswith("__") and n.endswith("__"))}
    names |= {"__init__"} if "__init__" in vars(theirs) else set()
    inherited = {n for n in names if not issubclass(_defined_by(ours, n), pp.QueuePool)}
    assert inherited == set(allowed["inherited"])


def test_the_test_extra_pins_the_listed_versions() -> None:
    # The test extra installs only SQLAlchemy releases that ALLOWED covers.
    assert admitted_releases("sqlalchemy", range(1, 4)) == set(ALLOWED)
