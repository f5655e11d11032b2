"""Pick the core: the compiled ``_corepool`` or its pure-Python twin ``_corepool_py``.

The Python core is used when ``PYPOOL_NO_EXTENSIONS`` is set (to anything but
``""`` or ``"0"``), on interpreters other than CPython, and when the compiled
module is absent. ``PYPOOL_CORE=native`` demands the compiled core: if it cannot
be imported, the ``ImportError`` propagates. ``PYPOOL_CORE=python`` demands the
Python core. ``CORE`` says which one was loaded: ``"native"`` or ``"python"``.
"""

import os
import sys
from typing import TYPE_CHECKING

__all__ = (
    "BUSY",
    "CHECK",
    "CORE",
    "CREATING",
    "EMPTY",
    "IDLE",
    "MAX_SIZE",
    "OK",
    "REASONS",
    "RESERVED",
    "RESET_FAILED",
    "CorePool",
    "PoolBase",
    "WaiterTicket",
)

_REQUESTED = os.environ.get("PYPOOL_CORE", "")
if _REQUESTED not in ("", "native", "python"):
    raise ImportError(f"PYPOOL_CORE must be 'native' or 'python', not {_REQUESTED!r}")

NO_EXTENSIONS = (
    os.environ.get("PYPOOL_NO_EXTENSIONS", "") not in ("", "0")
    or sys.implementation.name != "cpython"
    or _REQUESTED == "python"
) and _REQUESTED != "native"

if TYPE_CHECKING:  # the Python core is the type source
    from ._corepool_py import (
        BUSY,
        CHECK,
        CREATING,
        EMPTY,
        IDLE,
        MAX_SIZE,
        OK,
        REASONS,
        RESERVED,
        RESET_FAILED,
        CorePool,
        PoolBase,
        WaiterTicket,
    )

    CORE: str
else:

    def _load():
        if NO_EXTENSIONS:
            from . import _corepool_py

            return _corepool_py, "python"
        try:
            from . import _corepool
        except ImportError:
            if _REQUESTED == "native":
                raise
            from . import _corepool_py

            return _corepool_py, "python"
        return _corepool, "native"

    _impl, CORE = _load()
    globals().update({name: getattr(_impl, name) for name in __all__ if name != "CORE"})
