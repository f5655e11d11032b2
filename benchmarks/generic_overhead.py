"""Does ``Generic`` in the pools' classes slow the hot path?

``Pool`` and ``AsyncPool`` derive from ``typing.Generic`` (they are generic in
the connection type). This script builds, in the same process, a twin of
``Pool`` on the same core without ``Generic`` in its bases (the same methods,
the same namespace) and times ``acquire()`` + ``release()`` and ``with
pool.connection()`` on both, interleaved round by round, so that the load of
the machine falls on both alike. It prints the median ns/cycle of each and
their ratio; run it with::

    python benchmarks/generic_overhead.py [native|python] [rounds]
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Generic

import pypool
from pypool.pool.shared import HotPath, PoolShared, core_module_of
from pypool.pool.threaded import PoolMethods

_SKIP = {"__dict__", "__weakref__", "__orig_bases__", "__parameters__"}


def _namespace(cls: type) -> dict[str, Any]:
    return {k: v for k, v in cls.__dict__.items() if k not in _SKIP}


def plain_twin(bound: type) -> type:
    """``bound`` (``Pool`` on one core) rebuilt without ``Generic``."""
    core = core_module_of(bound)
    methods = type("PoolMethods", (PoolShared,), _namespace(PoolMethods))
    public = type("Pool", (methods, HotPath), _namespace(pypool.Pool))
    namespace = _namespace(bound)
    namespace["_public"] = public
    twin = type("Pool", (public, core.PoolBase), namespace)
    assert Generic not in twin.__mro__ and Generic in bound.__mro__
    return twin


class Conn:
    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


def cycle_acquire(pool: Any, n: int) -> float:
    acquire, release = pool.acquire, pool.release
    t0 = time.perf_counter_ns()
    for _ in range(n):
        release(acquire())
    return (time.perf_counter_ns() - t0) / n


def cycle_with(pool: Any, n: int) -> float:
    connection = pool.connection
    t0 = time.perf_counter_ns()
    for _ in range(n):
        with connection():
            pass
    return (time.perf_counter_ns() - t0) / n


def main() -> None:
    core = sys.argv[1] if len(sys.argv) > 1 else "native"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    bound = pypool.Pool.with_core(core)
    pools = {"generic": bound(Conn, min_size=4, max_size=4, reset=None)}
    pools["plain"] = plain_twin(bound)(Conn, min_size=4, max_size=4, reset=None)
    for pool in pools.values():
        pool.wait()
    n = 20_000 if core == "native" else 2_000
    results: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(rounds):
            for bench in (cycle_acquire, cycle_with):
                for name, pool in pools.items():
                    results.setdefault((bench.__name__, name), []).append(bench(pool, n))
    finally:
        for pool in pools.values():
            pool.close()
    print(f"core={core}, {rounds} rounds interleaved, median ns/cycle")
    for bench in ("cycle_acquire", "cycle_with"):
        generic = statistics.median(results[(bench, "generic")])
        plain = statistics.median(results[(bench, "plain")])
        print(f"{bench:14} generic {generic:8.1f}  plain {plain:8.1f}  ratio {generic / plain:.3f}")


if __name__ == "__main__":
    main()
