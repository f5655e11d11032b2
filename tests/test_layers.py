"""The layers of the package, enforced: no module imports a layer above its
own, nor a private name of another module, nor imports halfway down.

The layers, from the bottom (CONTRIBUTING.md, "Architecture"):

0. ``errors``, ``_secrets``, ``stats``, ``_weak``: what everything may use;
1. the core: ``_core`` (the switch), ``_corepool`` (native), ``_corepool_py``,
   and ``_records`` (the records both cores return);
2. the policy: ``pypool.pool`` and its modules;
3. the adapters: ``dbapi``, ``psycopg``, ``sqlalchemy``, ``asyncpg``;
4. the integrations: ``otel``, ``prometheus``;
5. the package itself (``pypool/__init__.py``, the names it re-exports);
6. the command line: ``pypool.cli`` and ``__main__``.

Every import in the source is read (with ``ast``, so those inside functions
and under ``TYPE_CHECKING`` count too); the few that cross a layer upward on
purpose are listed in :data:`ALLOWED`, each with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "pypool"

#: (prefix of a module name, layer); the longest prefix that matches wins.
LAYERS: list[tuple[str, int]] = [
    ("pypool.errors", 0),
    ("pypool._secrets", 0),
    ("pypool.stats", 0),
    ("pypool._weak", 0),
    ("pypool._core", 1),
    ("pypool._corepool", 1),
    ("pypool._corepool_py", 1),
    ("pypool._records", 1),
    ("pypool.pool", 2),
    ("pypool.dbapi", 3),
    ("pypool.psycopg", 3),
    ("pypool.sqlalchemy", 3),
    ("pypool.asyncpg", 3),
    ("pypool.otel", 4),
    ("pypool.prometheus", 4),
    ("pypool", 5),
    ("pypool.cli", 6),
    ("pypool.__main__", 6),
]

#: Upward imports made on purpose: (importer, imported) -> why.
ALLOWED: dict[tuple[str, str], str] = {
    ("pypool.pool.threaded", "pypool.dbapi"): (
        "Pool's default adapter is pypool.dbapi, imported when a pool is made without "
        "one (the adapter does not import the policy back)"
    ),
    ("pypool.otel", "pypool"): (
        "the meter's version is pypool.__version__, read from the installed metadata "
        "when first asked for"
    ),
}

#: Private names a module may import from another, and why (the hooks the
#: core documents for the layer above).
ALLOWED_PRIVATE: dict[tuple[str, str], str] = {}


def layer(module: str) -> int:
    best = max((p for p, _ in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return dict(LAYERS)[best]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    """Whether ``name`` is a module of the source tree (the native core is
    built from ``src/_corepool.pyx``)."""
    path = SRC.joinpath(*name.split("."))
    return (
        path.with_suffix(".py").exists()
        or (path / "__init__.py").exists()
        or name == "pypool._corepool"
    )


def modules() -> list[tuple[str, Path]]:
    return sorted((module_name(p), p) for p in PACKAGE.rglob("*.py"))


def imports(name: str, path: Path, text: str | None = None) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import of
    a pypool module in ``path`` (or in ``text``, as if it were there)."""
    if text is None:
        text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "pypool" or alias.name.startswith("pypool."):
                    found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source != "pypool" and not source.startswith("pypool."):
                continue
            names = [a.name for a in node.names]
            submodules = [n for n in names if is_module(f"{source}.{n}")]
            for sub in submodules:
                found.append((f"{source}.{sub}", [], node.lineno))
            rest = [n for n in names if n not in submodules]
            if rest:
                found.append((source, rest, node.lineno))
    return found


MODULES = modules()


def test_every_module_has_a_layer() -> None:
    assert MODULES
    for name, _ in MODULES:
        layer(name)


@pytest.mark.parametrize("name,path", MODULES, ids=[m for m, _ in MODULES])
def test_no_import_of_a_layer_above(name: str, path: Path) -> None:
    upward = []
    for target, _, line in imports(name, path):
        if layer(target) > layer(name) and (name, target) not in ALLOWED:
            upward.append(f"{path.relative_to(SRC)}:{line}: {name} (layer {layer(name)}) "
                          f"imports {target} (layer {layer(target)})")  # fmt: skip
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("name,path", MODULES, ids=[m for m, _ in MODULES])
def test_no_import_of_another_module_private_name(name: str, path: Path) -> None:
    private = []
    for target, names, line in imports(name, path):
        if target == name:
            continue
        for imported in names:
            if imported.startswith("_") and not imported.startswith("__"):
                if (name, f"{target}.{imported}") in ALLOWED_PRIVATE:
                    continue
                private.append(f"{path.relative_to(SRC)}:{line}: {name} imports "
                               f"{target}.{imported}")  # fmt: skip
    assert not private, "\n".join(private)


@pytest.mark.parametrize("name,path", MODULES, ids=[m for m, _ in MODULES])
def test_no_import_halfway_down(name: str, path: Path) -> None:
    """Module-level imports come before the first function or class."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    seen_definition = False
    late = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            seen_definition = True
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and seen_definition:
            late.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not late, f"imports halfway down {name}: {late}"


def test_the_rules_catch_what_they_should() -> None:
    """The walker sees relative, nested and TYPE_CHECKING imports."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from ..errors import PoolError\n"
        "if TYPE_CHECKING:\n"
        "    from ..cli import main\n"
        "def f():\n"
        "    from .. import dbapi\n"
        "    from ..otel import _registry_for\n"
    )
    fake = PACKAGE / "pool" / "_layers_probe.py"
    found = imports("pypool.pool._layers_probe", fake, source)
    targets = {(t, tuple(n)) for t, n, _ in found}
    assert ("pypool.errors", ("PoolError",)) in targets
    assert ("pypool.cli", ("main",)) in targets
    assert ("pypool.dbapi", ()) in targets
    assert ("pypool.otel", ("_registry_for",)) in targets
    assert layer("pypool.cli") > layer("pypool.pool._layers_probe") < layer("pypool.dbapi")
