"""The implementation switch (``pypool._core``) and the parity of the two
cores' public surface.

The switch runs once, at import, so each case runs in a fresh interpreter
with its own environment.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import sysconfig
from types import ModuleType
from typing import Any

import pytest

from _support.children import child_env
from _support.cores import expect_native, native_core_importable


def child_core(code: str = "", **env: str | None) -> subprocess.CompletedProcess[str]:
    script = f"{code}\nimport pypool\nprint(pypool.CORE)"
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(**env),
    )


def core_of(code: str = "", **env: str | None) -> str:
    proc = child_core(code, **env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


#: A child interpreter runs without the GIL (a free-threaded build, GIL not
#: forced on): there the default is the Python core.
CHILD_WITHOUT_GIL = bool(sysconfig.get_config_var("Py_GIL_DISABLED")) and os.environ.get(
    "PYTHON_GIL"
) not in ("1",)


@pytest.fixture(scope="module")
def native_by_default(native_available: bool) -> bool:
    """The native core is what a child picks when nothing is asked."""
    return native_available and not CHILD_WITHOUT_GIL


@pytest.fixture(scope="module")
def native_available() -> bool:
    available = native_core_importable()
    if not available and expect_native():
        pytest.fail("PYPOOL_EXPECT_CORE=native, but pypool._corepool cannot be imported")
    return available


@pytest.mark.parametrize("value", ["1", "yes", "true"])
def test_no_extensions_selects_python(value: str) -> None:
    assert core_of(PYPOOL_NO_EXTENSIONS=value) == "python"


@pytest.mark.parametrize("value", ["", "0"])
def test_no_extensions_empty_or_zero_is_off(value: str, native_by_default: bool) -> None:
    assert core_of(PYPOOL_NO_EXTENSIONS=value) == ("native" if native_by_default else "python")


def test_core_python_selects_python() -> None:
    assert core_of(PYPOOL_CORE="python") == "python"


def test_default_is_native_when_importable(native_by_default: bool) -> None:
    assert core_of() == ("native" if native_by_default else "python")


def test_default_falls_back_when_native_is_unimportable() -> None:
    blocked = "import sys; sys.modules['pypool._corepool'] = None"
    assert core_of(blocked) == "python"


@pytest.mark.native
def test_core_native_selects_native(native_available: bool) -> None:
    if CHILD_WITHOUT_GIL:
        pytest.skip("without the GIL, PYPOOL_CORE=native raises (tested below)")
    if not native_available:
        pytest.skip("the native core cannot be imported")
    assert core_of(PYPOOL_CORE="native") == "native"
    # An explicit request wins over the opt-out.
    assert core_of(PYPOOL_CORE="native", PYPOOL_NO_EXTENSIONS="1") == "native"


def test_core_native_raises_when_unimportable() -> None:
    blocked = "import sys; sys.modules['pypool._corepool'] = None"
    proc = child_core(blocked, PYPOOL_CORE="native")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr or "ModuleNotFoundError" in proc.stderr


def test_core_bad_value_raises() -> None:
    proc = child_core(PYPOOL_CORE="fast")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr
    assert "PYPOOL_CORE" in proc.stderr


def test_selected_classes_come_from_the_selected_module() -> None:
    code = (
        "import pypool, pypool._core as c\n"
        "mod = 'pypool._corepool' if pypool.CORE == 'native' else 'pypool._corepool_py'\n"
        "assert pypool.CorePool.__module__ == c.CorePool.__module__\n"
        "import importlib; m = importlib.import_module(mod)\n"
        "assert pypool.CorePool is m.CorePool and pypool.WaiterTicket is m.WaiterTicket\n"
        "assert c.IDLE == m.IDLE"
    )
    assert core_of(code, PYPOOL_CORE="python") == "python"
    assert core_of(code) in ("native", "python")


def test_expected_core_loaded() -> None:
    """The guard: where the native core must be in use (CI, wheels), it is."""
    expected = os.environ.get("PYPOOL_EXPECT_CORE")
    if not expected:
        pytest.skip("PYPOOL_EXPECT_CORE is not set")
    import pypool

    assert expected == pypool.CORE, f"PYPOOL_EXPECT_CORE={expected}, but {pypool.CORE} loaded"


# ----------------------------------------------------------------- parity


def public(obj: Any) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def test_same_public_names(native_module: ModuleType, python_module: ModuleType) -> None:
    assert sorted(native_module.__all__) == sorted(python_module.__all__)
    for name in python_module.__all__:
        assert hasattr(native_module, name), name
    assert public(native_module.CorePool) == public(python_module.CorePool)
    assert public(native_module.WaiterTicket) == public(python_module.WaiterTicket)
    assert public(native_module.PoolBase) == public(python_module.PoolBase)
    assert public(native_module.SlotInfo) == public(python_module.SlotInfo)


def test_same_constants(native_module: ModuleType, python_module: ModuleType) -> None:
    for name in python_module.__all__:
        value = getattr(python_module, name)
        if not isinstance(value, type):
            assert getattr(native_module, name) == value, name
    assert native_module.SEGMENT == python_module.SEGMENT


def _doc(obj: Any) -> str | None:
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if doc else None


@pytest.mark.parametrize("cls", ["CorePool", "WaiterTicket", "PoolBase"])
def test_same_docstrings(native_module: ModuleType, python_module: ModuleType, cls: str) -> None:
    py_cls, native_cls = getattr(python_module, cls), getattr(native_module, cls)
    assert _doc(native_cls) == _doc(py_cls)
    differ = [
        name
        for name in sorted(public(py_cls) & public(native_cls))  # names: test above
        if _doc(getattr(native_cls, name)) != _doc(getattr(py_cls, name))
    ]
    assert differ == []


def test_same_records(native_module: ModuleType, python_module: ModuleType) -> None:
    """Both cores hand out the one ``SlotInfo`` type, with the same fields in
    the same order, for the same slot."""
    import pypool

    assert native_module.SlotInfo is python_module.SlotInfo is pypool.SlotInfo
    infos = []
    for mod in (native_module, python_module):
        pool = mod.CorePool(2)
        conn = object()
        pool.fill(pool.reserve(), conn, lifetime=30)
        assert pool.try_acquire() is conn
        info = pool.slot_info(0)
        assert type(info) is python_module.SlotInfo
        infos.append(info)
        pool.release(conn)
        pool.close()
    native, python = infos
    assert native._fields == python._fields
    assert (native.state, native.uses, native.generation) == (
        python.state,
        python.uses,
        python.generation,
    )
    assert native.expires - native.created == pytest.approx(30.0)
    assert python.expires - python.created == pytest.approx(30.0)


def test_same_exceptions(native_module: ModuleType, python_module: ModuleType) -> None:
    from pypool import errors

    for mod in (native_module, python_module):
        pool = mod.CorePool(1)
        pool.close()
        with pytest.raises(errors.PoolClosed):
            pool.reserve()
    assert errors.PoolTimeout.__module__ == "pypool"


# ------------------------------------------------- without the GIL

#: Makes the child interpreter say it runs without the GIL, as a free-threaded
#: build does (this one cannot be had here: the decision is what is tested).
NO_GIL = "import sys; sys._is_gil_enabled = lambda: False"
WITH_GIL = "import sys; sys._is_gil_enabled = lambda: True"


def test_without_the_gil_the_python_core_is_used_and_says_why() -> None:
    proc = child_core("import warnings; warnings.simplefilter('always')\n" + NO_GIL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "python"
    assert "RuntimeWarning" in proc.stderr
    assert "GIL" in proc.stderr and "Python core" in proc.stderr


def test_without_the_gil_native_on_request_raises_saying_why() -> None:
    proc = child_core(NO_GIL, PYPOOL_CORE="native")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr
    assert "GIL" in proc.stderr


def test_without_the_gil_python_on_request_is_quiet() -> None:
    quiet = "import warnings; warnings.simplefilter('error')\n"
    proc = child_core(quiet + NO_GIL, PYPOOL_CORE="python")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "python"


def test_with_the_gil_enabled_the_native_core_is_used(native_available: bool) -> None:
    # A free-threaded build whose GIL is on (PYTHON_GIL=1) runs the native core.
    assert core_of(WITH_GIL) == ("native" if native_available else "python")
