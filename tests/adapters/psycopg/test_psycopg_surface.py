"""The public surface of pypool.psycopg's pools against psycopg_pool's.

``ConnectionPool``, ``NullConnectionPool``, ``AsyncConnectionPool`` and
``AsyncNullConnectionPool`` promise psycopg_pool's interface. These tests
compare, for the installed psycopg_pool:

- the public names of the classes and of a pool made with ``open=False``
  (psycopg_pool sets many of its attributes, such as ``timeout`` and
  ``name``, in ``__init__``);
- what kind of thing each public name both classes define is (method,
  property, static method...), and whether a method is a coroutine function;
- ``inspect.signature`` of every public method and of ``__init__``:
  parameter names, kinds and defaults. Annotations are not compared (each
  project writes its own).

Every difference must be listed in :data:`ALLOWED`, keyed by psycopg_pool's
``major.minor`` version, with the reason. A psycopg_pool version with no entry
fails the test, and so does a new name or signature in a listed one: a new
release is reviewed (and the entry added) before pypool claims to match it.
An entry that no longer matches a difference fails too, so the list stays
exact. ``docs/psycopg-migration.md`` describes the same differences.
"""

from __future__ import annotations

import asyncio
import inspect
from types import ModuleType
from typing import Any

import pytest

psycopg_pool = pytest.importorskip("psycopg_pool")

import pypool.psycopg as pp  # noqa: E402
from _support.surface import (  # noqa: E402
    Allowed,
    admitted_releases,
    allowed_for,
    differences,
    parameters,
    public,
)

#: Public names only pypool's pools have: pypool.Pool's interface, which
#: they extend (docs/pool.md, docs/psycopg-migration.md).
_POOL_INTERFACE = {
    "acquire": "pypool.Pool's borrow (getconn is the same hot path)",
    "add_listener": "pypool's pool events",
    "core": "which core runs the pool (native or python)",
    "discard": "pypool.Pool's: close a borrowed connection known to be broken",
    "idle": "pypool.Pool's gauge",
    "in_use": "pypool.Pool's gauge",
    "invalidate": "pypool.Pool's: retire a connection",
    "release": "pypool.Pool's return (putconn on the pool)",
    "remove_listener": "pypool's pool events",
    "run": "pypool.Pool's retry helper",
    "size": "pypool.Pool's gauge",
    "stats": "pypool's counters and gauges (get_stats() gives psycopg_pool's)",
    "waiting": "pypool.Pool's gauge",
    "with_core": "pypool.Pool's: the class on a given core (tests, benchmarks)",
}

#: Public names of psycopg_pool 3.3's classes that pypool does not offer.
_NOT_OFFERED_33 = {
    "reconnect_failed": "psycopg_pool's internal hook calling the user's callback: "
    "pypool calls reconnect_failed(pool) itself",
    "run_task": "psycopg_pool's worker queue: pypool has no such queue",
    "schedule_task": "psycopg_pool's scheduler: pypool's maintenance is its own",
    "worker": "psycopg_pool's worker function",
}

#: Signatures that deliberately differ.
_SIGNATURES_33 = {
    "__init__": "transaction_pooling= and pypool.Pool's settings (**options) are accepted too",
}
_SYNC_SIGNATURES_33 = {
    **_SIGNATURES_33,
    "putconn": "the core's hot path: conn is positional-only (putconn(conn=...) is refused)",
}


def _entry(signatures: dict[str, str]) -> dict[str, dict[str, str]]:
    return {"added": _POOL_INTERFACE, "missing": _NOT_OFFERED_33, "signature": signatures}


#: psycopg_pool ``major.minor`` -> class name -> {"added", "missing",
#: "signature"} -> name -> why. ``added``: public names only pypool has;
#: ``missing``: psycopg_pool's public names pypool lacks; ``signature``:
#: names whose kind or parameters deliberately differ.
ALLOWED: Allowed = {
    "3.3": {
        "ConnectionPool": _entry(_SYNC_SIGNATURES_33),
        "NullConnectionPool": _entry(_SIGNATURES_33),
        "AsyncConnectionPool": _entry(_SIGNATURES_33),
        "AsyncNullConnectionPool": _entry(_SIGNATURES_33),
    },
}

NAMES = ["ConnectionPool", "NullConnectionPool", "AsyncConnectionPool", "AsyncNullConnectionPool"]


def _allowed(name: str) -> dict[str, dict[str, str]]:
    return allowed_for(ALLOWED, "psycopg_pool", psycopg_pool.__version__, "pypool.psycopg", name)


def _instance(cls: type) -> Any:
    """A pool made with ``open=False`` (no connection, no thread), in a
    running loop for the async classes."""

    async def make() -> Any:
        return cls("", open=False)

    if "Async" in cls.__name__:
        return asyncio.run(make())
    return cls("", open=False)


@pytest.mark.parametrize("name", NAMES)
def test_public_names(name: str) -> None:
    ours, theirs = getattr(pp, name), getattr(psycopg_pool, name)
    allowed = _allowed(name)
    mine, peer = _instance(ours), _instance(theirs)
    try:
        a, b = public(ours) | public(mine), public(theirs) | public(peer)
        assert b - a == set(allowed["missing"]), "names pypool lacks"
        assert a - b == set(allowed["added"]), "names only pypool has"
    finally:
        if "Async" not in name:
            mine.close()


@pytest.mark.parametrize("name", NAMES)
def test_kinds_and_signatures(name: str) -> None:
    ours, theirs = getattr(pp, name), getattr(psycopg_pool, name)
    allowed = _allowed(name)
    differ = differences(ours, theirs, public(theirs) & public(ours), coroutines=True)
    assert set(differ) == set(allowed["signature"]), differ


@pytest.mark.parametrize("name", NAMES)
def test_init_takes_every_psycopg_pool_argument_with_its_default(
    name: str, core_module: ModuleType
) -> None:
    """The allowed ``__init__`` difference is additions only: each of
    psycopg_pool's parameters is there, of the same kind, with the same
    default, in the same order; so in what ``inspect.signature`` (help(),
    an IDE) shows of the class itself, public and bound to each core."""
    ours, theirs = getattr(pp, name), getattr(psycopg_pool, name)
    peer = parameters(theirs, "__init__")
    shown = [parameters(ours, "__init__")]
    for cls in (ours, ours.with_core(core_module)):
        shown.append([_SELF, *_class_parameters(cls)])
    assert [_SELF, *_class_parameters(theirs)] == peer
    for mine in shown:
        assert mine[: len(peer)] == peer
        assert [kind for _, kind, _ in mine[len(peer) :]] == ["KEYWORD_ONLY", "VAR_KEYWORD"]


_SELF = ("self", "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty)


def _class_parameters(cls: type) -> list[tuple[str, str, Any]]:
    signature = inspect.signature(cls)
    return [(p.name, p.kind.name, p.default) for p in signature.parameters.values()]


def test_the_test_extra_pins_the_listed_versions() -> None:
    # The test extra installs only psycopg_pool releases that ALLOWED covers.
    assert admitted_releases("psycopg-pool", range(2, 5)) == set(ALLOWED)
