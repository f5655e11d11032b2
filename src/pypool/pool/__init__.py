"""The policy layer: everything of a pool above its core.

- :mod:`pypool.pool.settings`: the one table of the pools' settings, with
  their defaults, bounds and validation;
- :mod:`pypool.pool.policy`: when to connect, the lifetime of a new
  connection, what a timed-out caller is told, the counters;
- :mod:`pypool.pool.shared`: what the thread pool and the asyncio pool share
  (statistics, events, leak reports, maintenance choices, binding a class to
  a core, the exit and fork hooks);
- :mod:`pypool.pool.threaded`: :class:`Pool`, for threads;
- :mod:`pypool.pool.aio`: :class:`AsyncPool`, for asyncio;
- :mod:`pypool.pool.protocols`: :class:`Adapter`, what a pool calls on its
  adapter, and ``ConnT``, the connection type the pools are generic in.

``from pypool.pool import Pool`` and ``pypool.Pool`` are the same class.
"""

from __future__ import annotations

from .aio import AsyncPool
from .protocols import Adapter
from .settings import SETTINGS, Setting
from .shared import EVENTS
from .threaded import Pool

__all__ = ["EVENTS", "SETTINGS", "Adapter", "AsyncPool", "Pool", "Setting"]
