"""The native core on a free-threaded CPython build.

The extension is not declared free-threading compatible: its free list is
lock-free, but the Python-side state around it (waiters, tickets, the address
map, counters) relies on the GIL. So on a free-threaded build CPython must turn
the GIL back on when the extension is imported, and say so. The day the
extension earns ``freethreading_compatible``, this test flips to assert that
the GIL stayed off.
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

CHILD = """
import sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import pypool._corepool
print(sys._is_gil_enabled())
print(any("GIL" in str(w.message) for w in caught))
"""


def test_importing_the_native_core_reenables_the_gil() -> None:
    pytest.importorskip("pypool._corepool")
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    gil_enabled, warned = proc.stdout.split()
    assert gil_enabled == "True", proc.stdout
    assert warned == "True", proc.stdout + proc.stderr
