"""The two cores, as the tests choose them, and what a test compares of a core pool."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import pytest

NATIVE_MODULE = "pypool._corepool"
PYTHON_MODULE = "pypool._corepool_py"

#: Keys of ``CorePool.stats()``; the ones measured in seconds vary run to run.
STATS_KEYS = frozenset(
    {
        "acquires",
        "waits",
        "wait_time",
        "wait_time_max",
        "timeouts",
        "abandoned",
        "use_time",
        "size",
        "idle",
        "in_use",
        "connecting",
        "claimed",
        "waiting",
        "max_size",
        "max_waiting",
    }
)
TIME_KEYS = frozenset({"wait_time", "wait_time_max", "use_time"})


def expect_native() -> bool:
    """True when the environment says the native core must be the one in use."""
    return os.environ.get("PYPOOL_EXPECT_CORE") == "native"


def import_native_core() -> ModuleType:
    """The native core; skips (or fails, if it is expected) when it cannot load."""
    try:
        return importlib.import_module(NATIVE_MODULE)
    except ImportError as exc:
        reason = f"the native core {NATIVE_MODULE} cannot be imported: {exc}"
        if expect_native():
            pytest.fail(f"PYPOOL_EXPECT_CORE=native, but {reason}", pytrace=False)
        pytest.skip(reason)


def native_core_importable() -> bool:
    try:
        importlib.import_module(NATIVE_MODULE)
    except ImportError:
        return False
    return True


def snapshot(pool: Any) -> tuple[Any, ...]:
    """What must not change when an operation is refused: counters, gauges
    and the state of every slot."""
    stats = {k: v for k, v in pool.stats().items() if k not in TIME_KEYS}
    slots = tuple(pool.slot_info(i)[0] for i in pool.slots())
    return (stats, slots, pool.closed, pool.generation)
