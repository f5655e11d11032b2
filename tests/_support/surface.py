"""Public-surface comparison of pypool's adapter pools with the pools they
stand in for (psycopg_pool's, SQLAlchemy's): public names, the kind of each
name, signatures, the ``ALLOWED`` table a test module keeps per
``major.minor`` release, and the test extra's pin of that release."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

#: ``major.minor`` -> class name -> category -> name -> why.
Allowed = dict[str, dict[str, dict[str, dict[str, str]]]]


def major_minor(version: str) -> str:
    major, minor = version.split(".")[:2]
    return f"{major}.{minor}"


def allowed_for(
    allowed: Allowed, project: str, version: str, ours: str, name: str
) -> dict[str, dict[str, str]]:
    """``allowed[major.minor][name]`` for ``project`` at ``version``; fails
    the test when that release has no entry."""
    key = major_minor(version)
    if key not in allowed:
        pytest.fail(
            f"{project} {version} has no entry in ALLOWED: compare its pool classes "
            f"with {ours}, handle what changed, then add an entry for {key}"
        )
    return allowed[key][name]


def public(obj: Any) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def kind(cls: type, name: str, *, coroutines: bool = False) -> str:
    """What ``cls.name`` is: property, classmethod, staticmethod, method or
    attribute. With ``coroutines``, a coroutine function is told apart
    (``coroutine method``...) and a method descriptor counts as a method."""
    raw = inspect.getattr_static(cls, name)
    if isinstance(raw, property):
        return "property"
    if isinstance(raw, classmethod):
        return "classmethod"
    if isinstance(raw, staticmethod):
        if coroutines and inspect.iscoroutinefunction(raw.__func__):
            return "coroutine staticmethod"
        return "staticmethod"
    if inspect.isfunction(raw) or (coroutines and inspect.ismethoddescriptor(raw)):
        return "coroutine method" if coroutines and inspect.iscoroutinefunction(raw) else "method"
    return f"attribute ({type(raw).__name__})"


def parameters(cls: type, name: str) -> list[tuple[str, str, Any]]:
    signature = inspect.signature(getattr(cls, name))
    return [(p.name, p.kind.name, p.default) for p in signature.parameters.values()]


def differences(ours: type, theirs: type, names: set[str], *, coroutines: bool = False) -> Any:
    """The names (and ``__init__``) whose kind differs, or whose parameters
    do for a method of any kind: name -> (ours, theirs)."""
    differ: dict[str, Any] = {}
    for name in sorted(names | {"__init__"}):
        kinds = (kind(ours, name, coroutines=coroutines), kind(theirs, name, coroutines=coroutines))
        if kinds[0] != kinds[1]:
            differ[name] = kinds
        elif kinds[0].endswith("method"):
            params = (parameters(ours, name), parameters(theirs, name))
            if params[0] != params[1]:
                differ[name] = params
    return differ


def admitted_releases(distribution: str, majors: range) -> set[str]:
    """The ``major.minor`` releases of ``distribution`` the test extra in
    pyproject.toml admits (it must pin it exactly once)."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.version import Version

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    pins = [
        Requirement(r)
        for r in extras["test"]
        if Requirement(r).name.lower() == distribution.lower()
    ]
    assert len(pins) == 1
    return {
        f"{major}.{minor}"
        for major in majors
        for minor in range(10)
        if pins[0].specifier.contains(Version(f"{major}.{minor}.0"))
        or pins[0].specifier.contains(Version(f"{major}.{minor}.99"))
    }
