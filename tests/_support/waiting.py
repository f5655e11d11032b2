"""Waiting for a condition that another thread or task makes true.

One contract for both: poll ``predicate`` every ``step`` seconds until it
holds or ``timeout`` seconds pass, and return whether it held (its value at
the end). The caller asserts: ``assert wait_until(lambda: pool.idle == 2)``,
or ``assert not wait_until(...)`` for a condition that must not come.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ("eventually", "wait_until")

#: How long a wait lasts unless the caller says: long enough for a loaded
#: machine, where a condition that holds at all holds well within it.
TIMEOUT = 10.0


def wait_until(
    predicate: Callable[[], bool], timeout: float = TIMEOUT, step: float = 0.005
) -> bool:
    """Polls ``predicate`` (sleeping between polls) until it holds (True) or
    ``timeout`` seconds pass (its last value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


async def eventually(
    predicate: Callable[[], bool], timeout: float = TIMEOUT, step: float = 0.005
) -> bool:
    """:func:`wait_until` for a coroutine: polls on the running loop, letting
    its other tasks run between polls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return bool(predicate())
