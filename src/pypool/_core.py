"""Pick the core: the compiled ``_corepool`` or its pure-Python twin ``_corepool_py``.

The Python core is used when ``PYPOOL_NO_EXTENSIONS`` is set (to anything but
``""`` or ``"0"``), on interpreters other than CPython, when the compiled
module is absent, and when the interpreter runs without the GIL (a
free-threaded build): the native core relies on the GIL for the state around
its lock-free free list, so there it would run unprotected; a
``RuntimeWarning`` says so. ``PYPOOL_CORE=native`` demands the compiled core:
if it cannot be imported, or the GIL is off, ``ImportError`` is raised.
``PYPOOL_CORE=python`` demands the Python core. ``CORE`` says which one was
loaded: ``"native"`` or ``"python"``.
"""

import os
import sys
import warnings
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
    "SlotInfo",
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

#: Why the native core does not run without the GIL.
NO_GIL_REASON = (
    "this interpreter runs without the GIL (a free-threaded build), and the native "
    "core relies on the GIL for the state around its free list (wait queue, address "
    "map, counters)"
)


def gil_disabled() -> bool:
    """True when the interpreter runs without the GIL (checked before the
    native core is imported: importing it would turn the GIL back on, or,
    with ``PYTHON_GIL=0``, run it unprotected)."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return is_enabled is not None and not is_enabled()


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
        SlotInfo,
        WaiterTicket,
    )

    CORE: str
else:

    def _load():
        if NO_EXTENSIONS:
            from . import _corepool_py

            return _corepool_py, "python"
        if gil_disabled():
            if _REQUESTED == "native":
                raise ImportError(
                    f"PYPOOL_CORE=native, but {NO_GIL_REASON}: run with the GIL "
                    "(PYTHON_GIL=1) or use the Python core"
                )
            warnings.warn(
                f"pypool uses its Python core: {NO_GIL_REASON}",
                RuntimeWarning,
                stacklevel=2,
            )
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
