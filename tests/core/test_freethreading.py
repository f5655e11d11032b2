"""pypool on a free-threaded CPython build.

The native core is not declared free-threading compatible: its free list is
lock-free, but the Python-side state around it (waiters, tickets, the address
map, counters) relies on the GIL. So on an interpreter running without the
GIL, ``import pypool`` picks the Python core, says why in a warning, and
leaves the GIL off; importing the extension directly makes CPython turn the
GIL back on, and say so. The day the extension earns
``freethreading_compatible``, these tests flip.

(``test_core_switch.py`` tests the same decision on any interpreter, with
the GIL facts patched.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest

pytestmark = pytest.mark.skipif(
    not sysconfig.get_config_var("Py_GIL_DISABLED"),
    reason="needs a free-threaded CPython build (3.13t or later)",
)

IMPORT_PYPOOL = """
import sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import pypool
print(pypool.CORE)
print(sys._is_gil_enabled())
print(any("GIL" in str(w.message) and "Python core" in str(w.message) for w in caught))
"""

IMPORT_EXTENSION = """
import sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import pypool._corepool
print(sys._is_gil_enabled())
print(any("GIL" in str(w.message) for w in caught))
"""


def _run(code: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON_GIL", "PYPOOL_CORE")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_pypool_runs_the_python_core_and_keeps_the_gil_off() -> None:
    core, gil_enabled, warned = _run(IMPORT_PYPOOL)
    assert core == "python"
    assert gil_enabled == "False"
    assert warned == "True"


def test_importing_the_native_core_reenables_the_gil() -> None:
    pytest.importorskip("pypool._corepool")
    gil_enabled, warned = _run(IMPORT_EXTENSION)
    assert gil_enabled == "True"
    assert warned == "True"
