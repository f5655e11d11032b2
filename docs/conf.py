"""Sphinx configuration of pypool's documentation site.

Build it with ``python -m sphinx -W -n --keep-going -b html docs docs/_build/html``
(``pip install '.[docs]'`` first): warnings are errors and every cross-reference
must resolve, so a renamed function, a broken link between pages or a public
name missing from the API reference fails the build.

Why Sphinx (with furo, autodoc and MyST for the Markdown pages) rather than
MkDocs with mkdocstrings: pypool's docstrings are reStructuredText, with
section titles, tables and ``:class:`` / ``:meth:`` references. autodoc
renders them as written and checks every reference; mkdocstrings reads
docstrings as Markdown, where those tables and roles would show as raw text.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import types
from pathlib import Path
from typing import Any

# The API reference is read from the checkout's sources, with the Python
# core: it has the same classes, docstrings and behaviour as the native one
# (the parity tests compare them), and the signatures and annotations that a
# compiled module does not keep. So a docstring edit shows without a rebuild
# of the native core. Set before pypool is first imported.
os.environ["PYPOOL_CORE"] = "python"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from docutils import nodes  # noqa: E402
from sphinx import addnodes  # noqa: E402
from sphinx.application import Sphinx  # noqa: E402
from sphinx.util import logging  # noqa: E402
from sphinx.util.inspect import stringify_signature  # noqa: E402

import pypool  # noqa: E402

logger = logging.getLogger(__name__)

project = "pypool"
author = "the pypool authors"
copyright = "the pypool authors"
release = pypool.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", ".venv*"]

html_theme = "furo"
html_title = f"pypool {release}"

# Markdown: heading anchors so that ``page.md#section`` links resolve.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# ---------------------------------------------------------------- autodoc

autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
add_module_names = False

# Every cross-reference must resolve (``-n``), with three exceptions, rendered
# as plain text: names outside pypool (the standard library, the drivers and
# integrations: there is no inventory of theirs to resolve against without
# network access), private names (never documented: the return types of
# ``connection()``, an inherited SQLAlchemy docstring's ``_pool.Pool``), and
# the type variables of generic signatures.
nitpicky = True
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(collections|typing|types|asyncio|threading|logging|weakref|psycopg|psycopg_pool"
        r"|sqlalchemy|asyncpg|pymysql|opentelemetry|prometheus_client)(\..*)?",
    ),
    # Unqualified in annotations (imported for type checking only).
    (r"py:class", r"MeterProvider|Metric|AbstractAsyncContextManager|AbstractContextManager|Self"),
    (r"py:.*", r"(pypool(\.\w+)*\.)?_\w+(\.\w+)*"),
    (r"py:class", r"(pypool(\.\w+)*\.)?T"),
    # The psycopg package's internal module (what its pools share).
    (r"py:.*", r"pypool\.psycopg\.base\.\w+"),
    # Type variables: T, and the connection type the pools are generic in.
    (r"py:class", r"(pypool(\.\w+)*\.)?(T|ConnT|CT|ACT)"),
    # The core's default fairness bound, which pypool does not export.
    (r"py:data", r"DEFAULT_HANDOFF_AFTER"),
]

#: The public modules whose ``__all__`` the API reference must cover
#: (``pypool.pool`` only for ``EVENTS``: ``Pool`` is ``pypool.Pool``).
PUBLIC_MODULES = [
    "pypool",
    "pypool.pool",
    "pypool.errors",
    "pypool.dbapi",
    "pypool.asyncpg",
    "pypool.psycopg",
    "pypool.sqlalchemy",
    "pypool.otel",
    "pypool.prometheus",
    "pypool.stats",
]


def _public_names(module: types.ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:  # a module of constants: its upper-case names
        names = [n for n in vars(module) if n.isupper() and not n.startswith("_")]
    return list(names)


def _check_api_reference(app: Sphinx, env: Any) -> None:
    """Warns (an error under ``-W``) for each public name the API reference
    does not document, under its own name or as the object it refers to."""
    documented = env.get_domain("py").objects  # full name -> entry
    documented_ids = set()
    for fullname in documented:
        obj = _resolve(fullname)
        if isinstance(obj, (type, types.FunctionType, types.ModuleType)):
            documented_ids.add(id(obj))
    for modname in PUBLIC_MODULES:
        module = importlib.import_module(modname)
        for name in _public_names(module):
            if f"{modname}.{name}" in documented:
                continue
            obj = getattr(module, name)
            if isinstance(obj, (type, types.FunctionType, types.ModuleType)) and (
                id(obj) in documented_ids
            ):
                continue
            logger.warning(
                "the API reference does not document %s.%s, a public name of %s",
                modname,
                name,
                modname,
                type="pypool",
                subtype="api",
            )


def _resolve(fullname: str) -> object:
    parts = fullname.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def _signature(
    app: Sphinx,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str, str | None] | None:
    """Signatures without private parameters, and a pool class's
    from its ``__init__`` (its ``__new__`` only passes arguments on)."""
    if not name.startswith("pypool") or signature is None:
        return None
    try:
        if what == "class":
            if obj.__init__ is object.__init__:
                return None
            if "__signature__" in vars(obj):
                sig = inspect.signature(obj)
            else:
                sig = inspect.signature(obj.__init__)
                sig = sig.replace(parameters=list(sig.parameters.values())[1:])
            sig = sig.replace(return_annotation=inspect.Signature.empty)
        elif callable(obj):
            sig = inspect.signature(obj)
            params = list(sig.parameters.values())
            if what == "method" and params and params[0].name == "self":
                sig = sig.replace(parameters=params[1:])
        else:
            return None
    except (TypeError, ValueError):
        return None
    private = [p for p in sig.parameters.values() if p.name.startswith("_")]
    if not private and what != "class":
        return None
    sig = sig.replace(parameters=[p for p in sig.parameters.values() if p not in private])
    text = stringify_signature(sig, unqualified_typehints=True)
    if sig.return_annotation is not inspect.Signature.empty:
        text, _, ret = text.partition(" -> ")
        return text, ret
    return text, return_annotation


def _resolve_in_package(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    """Resolves in pypool's public modules, where the reader looks for it, a
    name a docstring gives without its module (``:class:`NotBorrowed``` in a
    method inherited from the core, ``:data:`EVENTS``` in ``Pool``'s) or an
    annotation gives with a private one (``pypool._corepool_py.WaiterTicket``)."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    if target.startswith("_"):
        return None
    parts = target.split(".")
    if parts[0] == "pypool":
        private = [i for i, p in enumerate(parts) if p.startswith("_") and not p.endswith("__")]
        if not private or private[-1] == len(parts) - 1:
            return None
        target = ".".join(parts[private[-1] + 1 :])
    domain = env.get_domain("py")
    for modname in PUBLIC_MODULES:
        name = f"{modname}.{target}"
        found = domain.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], name, node, contnode
        )
        if found is not None:
            found["reftitle"] = name
            return found
    return None


def _no_type_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """A constant has no docstring of its own: not its type's (``str``'s)."""
    own = type(obj).__doc__  # a descriptor, not a str, for a named tuple's field
    if (
        what in ("data", "attribute")
        and isinstance(own, str)
        and own
        and "\n".join(lines).strip() == inspect.cleandoc(own)
    ):
        lines.clear()


_MODULE_NAMES = {m.split(".")[1] for m in PUBLIC_MODULES if "." in m}

#: Inline code that names a public object: ``pypool.dbapi.mask_dsn``, also
#: called (``pypool.otel.instrument(pool)``).
_API_LITERAL = re.compile(r"(pypool(?:\.\w+)+)(?:\(.*\))?")


def _link_api_names(app: Sphinx, doctree: nodes.document) -> None:
    """Makes inline code that names a public pypool object (in the pages and
    in docstrings) a link to its reference, so that a name that no longer
    exists, or that the reference does not document, fails the build."""
    for literal in list(doctree.findall(nodes.literal)):
        if isinstance(literal.parent, (nodes.reference, addnodes.pending_xref)):
            continue
        match = _API_LITERAL.fullmatch(literal.astext())
        if match is None:
            continue
        name = match.group(1)
        parts = name.split(".")
        if any(p.startswith("_") and not p.endswith("__") for p in parts):
            continue  # a private module, named when the text is about internals
        if not (parts[1] in _MODULE_NAMES or parts[1][0].isupper() or parts[1].endswith("__")):
            continue  # a metric's name (``pypool.connections.created``)
        xref = addnodes.pending_xref(
            "", refdomain="py", reftype="obj", reftarget=name, refexplicit=True, refwarn=True
        )
        literal.replace_self(xref)
        xref += literal


def setup(app: Sphinx) -> None:
    app.connect("doctree-read", _link_api_names)
    app.connect("autodoc-process-docstring", _no_type_docstring)
    app.connect("missing-reference", _resolve_in_package)
    app.connect("autodoc-process-signature", _signature)
    app.connect("env-check-consistency", _check_api_reference)
