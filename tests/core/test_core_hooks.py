"""The private contract between the cores and the policy layer.

The public parity tests (``test_core_switch.py``) skip underscore names; the
policy layer (``Pool``, ``AsyncPool`` and the adapters' pools, subclasses of a
core's ``PoolBase``) relies on private ones too: the non-blocking halves of
the hot path it calls (``_take``, ``_give``, ...), the hooks it overrides
(``_vet``, ``_retire``, ...) and ``_Lease._discard``. Here both cores are
compared on those: the names, their signatures and a behavioural smoke of
each, and an ast walk of the package checks that the list compared is every
private core name the policy layer uses, so that a new hook cannot be added
unnoticed.
"""

from __future__ import annotations

import ast
import inspect
import pathlib
import threading
from types import ModuleType
from typing import Any

import pytest

import pypool
from _support.fakes import FakeConn
from pypool.errors import ConfigurationError, PoolClosed, PoolTimeout

#: The private names of each core class that the policy layer calls,
#: overrides or reads: the contract both cores keep.
HOOK_METHODS: dict[str, tuple[str, ...]] = {
    "PoolBase": (
        # called by the policy layer
        "_give",
        "_give_back",
        "_lease",
        "_set_observe",
        "_set_reset",
        "_set_thread",
        "_set_timeout",
        "_take",
        # overridden by the policy layer, called by the core
        "_checked_out",
        "_checking_in",
        "_failed",
        "_rejected",
        "_retire",
        "_vet",
    ),
    "_Lease": ("_discard",),
}
#: Private attributes of a PoolBase instance that the policy layer reads.
HOOK_ATTRIBUTES: tuple[str, ...] = ("_core", "_unchecked")

#: The core modules; everything else in the package is the policy layer (or
#: above it) and reaches the core only through the contract.
CORE_FILES = frozenset({"_corepool_py.py", "_core.py"})
PACKAGE_DIR = pathlib.Path(pypool.__file__).parent


def compared_names() -> set[str]:
    return {name for names in HOOK_METHODS.values() for name in names} | set(HOOK_ATTRIBUTES)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def policy_private_names() -> dict[str, set[str]]:
    """Every private name the package outside the cores reads, calls or
    defines as a method, and the files that do."""
    used: dict[str, set[str]] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if path.name in CORE_FILES:
            continue
        where = str(path.relative_to(PACKAGE_DIR))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                used.setdefault(node.attr, set()).add(where)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(
                        item.name
                    ):
                        used.setdefault(item.name, set()).add(where)
    return used


def core_private_names(module: ModuleType) -> set[str]:
    """The private names a core shows from Python on its classes."""
    names: set[str] = set()
    for cls in ("PoolBase", "CorePool", "WaiterTicket", "_Lease"):
        names |= {name for name in dir(getattr(module, cls)) if _private(name)}
    return names


# --------------------------------------------------- the list is complete


def test_every_private_core_name_the_policy_uses_is_compared(native_module: ModuleType) -> None:
    """The native core shows from Python only what it offers on purpose (its
    C internals are invisible), so a private name it shows that the policy
    layer uses is part of the contract, and must be compared here."""
    used = policy_private_names()
    unlisted = {
        name: sorted(used[name])
        for name in core_private_names(native_module) & set(used)
        if name not in compared_names()
    }
    assert unlisted == {}, "add these to HOOK_METHODS or HOOK_ATTRIBUTES"


def test_every_compared_name_is_used_by_the_policy() -> None:
    """The list does not keep names nobody relies on any more."""
    assert compared_names() - set(policy_private_names()) == set()


@pytest.mark.parametrize(
    "pool_class",
    [
        "pypool.Pool",
        "pypool.AsyncPool",
        "pypool.psycopg.ConnectionPool",
        "pypool.psycopg.NullConnectionPool",
        "pypool.psycopg.AsyncConnectionPool",
        "pypool.psycopg.AsyncNullConnectionPool",
    ],
)
def test_the_policy_overrides_no_internal_of_the_python_core(
    python_module: ModuleType, pool_class: str
) -> None:
    """The Python core's PoolBase has internals beyond the contract
    (``_release``, ``_deliver``, ...); a policy class that defined one of
    those names would change the Python core's behaviour only."""
    internals = {name for name in vars(python_module.PoolBase) if _private(name)}
    internals -= compared_names()
    module, _, name = pool_class.rpartition(".")
    cls = getattr(pytest.importorskip(module), name)
    defined: set[str] = set()
    for klass in cls.__mro__:
        if klass.__name__ == "PoolBase":
            break
        defined |= set(vars(klass))
    assert defined & internals == set()


# ------------------------------------------------------- names, signatures


@pytest.mark.parametrize(
    ("cls", "name"), [(cls, name) for cls, names in HOOK_METHODS.items() for name in names]
)
def test_same_hook_signatures(
    native_module: ModuleType, python_module: ModuleType, cls: str, name: str
) -> None:
    def shape(module: ModuleType) -> list[tuple[str, Any, bool]]:
        method = getattr(getattr(module, cls), name)
        return [
            (p.name, p.kind, p.default is inspect.Parameter.empty)
            for p in inspect.signature(method).parameters.values()
        ]

    assert shape(native_module) == shape(python_module)


def test_same_hook_docstrings(native_module: ModuleType, python_module: ModuleType) -> None:
    differ = [
        f"{cls}.{name}"
        for cls, names in HOOK_METHODS.items()
        for name in names
        if inspect.getdoc(getattr(getattr(native_module, cls), name))
        != inspect.getdoc(getattr(getattr(python_module, cls), name))
    ]
    assert differ == []


@pytest.mark.parametrize("name", HOOK_ATTRIBUTES)
def test_same_hook_attributes(core_module: ModuleType, name: str) -> None:
    core = core_module.CorePool(1)
    base = core_module.PoolBase(core)
    assert hasattr(base, name)
    core.close()


# -------------------------------------------------- behaviour, per hook


class Probe:
    """A PoolBase subclass of one core that records the hooks it is called
    with, as the policy layer overrides them."""

    @staticmethod
    def make(core_module: ModuleType, size: int = 1, **kw: Any) -> Any:
        class _Probe(core_module.PoolBase):  # type: ignore[name-defined,misc]
            def __init__(self, core: Any, timeout: float = 30.0, reset: Any = None) -> None:
                super().__init__(core, timeout, reset)
                self.calls: list[tuple[Any, ...]] = []
                self.vet_result: BaseException | None = None

            def _vet(self, conn: Any, timeout: float) -> BaseException | None:
                self.calls.append(("_vet", conn, type(timeout)))
                result, self.vet_result = self.vet_result, None  # once
                return result

            def _checked_out(self, conn: Any) -> None:
                self.calls.append(("_checked_out", conn))

            def _checking_in(self, conn: Any) -> None:
                self.calls.append(("_checking_in", conn))

            def _retire(self, conn: Any, reason: int, exc: BaseException | None) -> None:
                self.calls.append(("_retire", conn, reason, exc))

            def _rejected(self, conn: Any, reason: int, exc: BaseException | None) -> None:
                self.calls.append(("_rejected", conn, reason, exc))

            def _failed(self, exc: Any, timeout: float) -> BaseException:
                self.calls.append(("_failed", type(exc), timeout))
                return RuntimeError(f"failed: {type(exc).__name__}")

        core = core_module.CorePool(size)
        conns = []
        for _ in range(size):
            conn = FakeConn()
            core.fill(core.reserve(), conn)
            conns.append(conn)
        return _Probe(core, **kw), conns


@pytest.fixture
def probe(core_module: ModuleType) -> Any:
    made: list[Any] = []

    def make(size: int = 1, **kw: Any) -> Any:
        base, conns = Probe.make(core_module, size, **kw)
        made.append(base)
        return base, conns

    yield make
    for base in made:
        base._core.close()


def test_core_attribute_is_the_core(probe: Any, core_module: ModuleType) -> None:
    base, _ = probe()
    assert isinstance(base._core, core_module.CorePool)


def test_take_serves_only_the_thread_set(probe: Any) -> None:
    base, (conn,) = probe()
    assert base._take() is None  # no thread set: 0
    base._set_thread(threading.get_ident())
    seen: list[Any] = []
    other = threading.Thread(target=lambda: seen.append(base._take()))
    other.start()
    other.join()
    assert seen == [None]
    assert base._take() is conn
    assert base._take() is None  # nothing idle
    base.release(conn)
    base._set_thread(0)
    assert base._take() is None


def test_take_sets_aside_a_connection_to_check_in_unchecked(probe: Any) -> None:
    base, (conn,) = probe()
    base._set_thread(threading.get_ident())
    assert base._unchecked is None
    base._core.check_after = 0.0
    assert base._take() is None
    assert base._unchecked is conn
    assert base._take() is None  # one set aside at a time
    base._unchecked = None
    base._core.release(conn)


def test_give_returns_a_pending_reset_and_give_back_ends_it(probe: Any) -> None:
    pending = object()
    base, (conn,) = probe(reset=lambda c: pending)
    assert base.acquire() is conn
    assert base._give(conn) is pending
    assert base._core.in_use == 1  # still out until the reset is awaited
    base._give_back(conn)
    assert (base._core.in_use, base._core.idle) == (0, 1)
    base._set_reset(None)
    assert base.acquire() is conn
    assert base._give(conn) is None
    assert base._core.idle == 1


def test_set_reset(probe: Any) -> None:
    base, (conn,) = probe()
    reset: list[Any] = []
    base._set_reset(reset.append)
    base.release(base.acquire())
    assert reset == [conn]
    with pytest.raises(ConfigurationError):
        base._set_reset(42)


def test_set_timeout(probe: Any) -> None:
    base, (conn,) = probe()
    assert base.acquire() is conn
    base._set_timeout(0.01)
    with pytest.raises(RuntimeError, match="failed: PoolTimeout"):
        base.acquire()  # the pool's timeout: the one just set
    assert base.calls == [("_failed", PoolTimeout, 0.01)]
    with pytest.raises(ConfigurationError):
        base._set_timeout(-1)
    base.release(conn)


def test_set_observe_runs_checked_out_and_checking_in(probe: Any) -> None:
    base, (conn,) = probe()
    base.release(base.acquire())
    assert base.calls == []  # off: the hot path calls no Python code
    base._set_observe(True)
    base.release(base.acquire())
    assert base.calls == [("_checked_out", conn), ("_checking_in", conn)]


def test_vet_and_rejected(probe: Any, core_module: ModuleType) -> None:
    base, conns = probe(2)
    base._core.check_after = 0.0
    bad = ValueError("broken")
    base.vet_result = bad
    got = base.acquire(timeout=1.0)
    first, second = (call[1] for call in base.calls if call[0] == "_vet")
    assert {first, second} == set(conns) and got is second
    assert base.calls == [
        ("_vet", first, float),
        ("_rejected", first, core_module.CHECK, bad),
        ("_vet", second, float),
    ]
    assert (base._core.size, base._core.in_use) == (1, 1)  # the rejected one's slot is free


def test_retire_on_return_after_close(probe: Any, core_module: ModuleType) -> None:
    base, (conn,) = probe()
    assert base.acquire() is conn
    base._core.close()
    base.release(conn)
    assert base.calls == [("_retire", conn, core_module.CLOSED, None)]


def test_failed_gets_the_core_error(probe: Any) -> None:
    base, _ = probe()
    base._core.close()
    with pytest.raises(RuntimeError, match="failed: PoolClosed"):
        base.acquire(timeout=0)
    assert base.calls == [("_failed", PoolClosed, 0.0)]


def test_lease_ends_with_end(probe: Any) -> None:
    base, (conn,) = probe()
    ends: list[tuple[Any, Any]] = []

    def end(c: Any, exc_type: Any) -> None:
        ends.append((c, exc_type))
        base.release(c)

    with base._lease(1.0, end) as got:
        assert got is conn
    with pytest.raises(KeyError), base._lease(1.0, end):
        raise KeyError
    assert ends == [(conn, None), (conn, KeyError)]
    assert base._core.idle == 1
    with pytest.raises(ConfigurationError):
        base._lease(1.0, 42)


def test_lease_discard_takes_the_connection_out(probe: Any) -> None:
    base, (conn,) = probe()
    lease = base.connection()
    with lease as got:
        assert lease._discard() is got is conn
    assert (base._core.size, base._core.idle, base._core.in_use) == (0, 0, 0)
    assert base.calls == []  # the caller closes it
