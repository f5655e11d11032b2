"""The non-blocking halves of the core's hot path, ``PoolBase._take``,
``_give`` and ``_give_back`` (the asyncio pool's fast path), on both cores:
what they hand out, what they set aside, which hooks they call."""

from __future__ import annotations

import threading
import time
from types import ModuleType
from typing import Any

import pytest

from pypool.errors import NotBorrowed


class Conn:
    """A connection stand-in whose reset can be made to return a value or
    raise."""

    def __init__(self) -> None:
        self.resets = 0
        self.reset_returns: Any = None
        self.reset_raises: BaseException | None = None

    def reset(self) -> Any:
        self.resets += 1
        if self.reset_raises is not None:
            raise self.reset_raises
        return self.reset_returns


def recording_base(core_module: ModuleType) -> type:
    class Recording(core_module.PoolBase):  # type: ignore[misc,name-defined]
        """PoolBase with hooks that write down every call."""

        def __init__(self, core: Any) -> None:
            super().__init__(core, 5.0, "reset")
            self.calls: list[tuple[Any, ...]] = []

        def _retire(self, conn: Any, reason: int, exc: BaseException | None) -> None:
            self.calls.append(("retire", conn, reason, exc))

        def _rejected(self, conn: Any, reason: int, exc: BaseException | None) -> None:
            self.calls.append(("rejected", conn, reason, exc))

        def _checked_out(self, conn: Any) -> None:
            self.calls.append(("checked_out", conn))

        def _checking_in(self, conn: Any) -> None:
            self.calls.append(("checking_in", conn))

    return Recording


def make(core_module: ModuleType, n: int = 2, **thresholds: Any) -> tuple[Any, list[Conn]]:
    core = core_module.CorePool(n)
    for name, value in thresholds.items():
        setattr(core, name, value)
    conns = [Conn() for _ in range(n)]
    for conn in conns:
        core.fill(core.reserve(), conn, None)
    pool = recording_base(core_module)(core)
    pool._set_thread(threading.get_ident())
    return pool, conns


def test_take_serves_only_the_bound_thread(core_module: ModuleType) -> None:
    pool, _conns = make(core_module)
    pool._set_thread(0)
    assert pool._take() is None
    assert pool._core.idle == 2

    taken: list[Any] = []
    pool._set_thread(threading.get_ident())
    worker = threading.Thread(target=lambda: taken.append(pool._take()))
    worker.start()
    worker.join()
    assert taken == [None]
    assert pool._core.idle == 2

    conn = pool._take()
    assert isinstance(conn, Conn)
    assert pool._core.idle == 1 and pool._core.in_use == 1


def test_take_and_give_round_trip(core_module: ModuleType) -> None:
    pool, conns = make(core_module)
    first = pool._take()
    second = pool._take()
    assert {id(first), id(second)} == {id(c) for c in conns}
    assert pool._take() is None  # nothing idle left: the caller waits
    assert pool._core.stats()["acquires"] == 2

    assert pool._give(first) is None
    assert first.resets == 1
    assert pool._core.idle == 1
    assert pool._take() is first  # LIFO: the one just returned
    with pytest.raises(NotBorrowed):
        pool._give(Conn())


def test_take_calls_observe_hooks_only_when_asked(core_module: ModuleType) -> None:
    pool, _conns = make(core_module)
    conn = pool._take()
    pool._give(conn)
    assert pool.calls == []
    pool._set_observe(True)
    conn = pool._take()
    pool._give(conn)
    assert pool.calls == [("checked_out", conn), ("checking_in", conn)]


def test_take_sets_aside_a_connection_to_check(core_module: ModuleType) -> None:
    pool, _conns = make(core_module, check_after=0.0)
    assert pool._take() is None
    unchecked = pool._unchecked
    assert isinstance(unchecked, Conn)
    assert pool._core.in_use == 1  # borrowed by the caller's slow path
    # While one is set aside, nothing more is taken (it would be lost).
    assert pool._take() is None
    assert pool._core.in_use == 1
    pool._unchecked = None
    pool._give(unchecked)
    assert pool._core.idle == 2


def test_take_rejects_what_the_verdicts_retire_and_tries_the_next(
    core_module: ModuleType,
) -> None:
    core = core_module.CorePool(2)
    old, young = Conn(), Conn()
    core.fill(core.reserve(), young, None)
    core.fill(core.reserve(), old, 0.001)  # LIFO: handed out first
    pool = recording_base(core_module)(core)
    pool._set_thread(threading.get_ident())
    time.sleep(0.01)
    assert pool._take() is young
    assert pool.calls == [("rejected", old, core_module.EXPIRED, None)]
    assert core.size == 1 and core.in_use == 1


def test_give_retires_what_the_verdicts_retire(core_module: ModuleType) -> None:
    pool, _conns = make(core_module, max_uses=1)
    first = pool._take()
    assert pool._give(first) is None  # used up: retired at its return
    assert first.resets == 1
    assert pool.calls == [("retire", first, core_module.USED_UP, None)]
    assert pool._core.size == 1


def test_take_on_a_closed_pool_gives_none(core_module: ModuleType) -> None:
    pool, _conns = make(core_module)
    pool._core.close()
    assert pool._take() is None


def test_give_hands_back_an_awaitable_reset(core_module: ModuleType) -> None:
    pool, _conns = make(core_module)
    conn = pool._take()
    marker = object()
    conn.reset_returns = marker
    assert pool._give(conn) is marker
    assert pool._core.in_use == 1  # still the caller's until _give_back
    pool._give_back(conn)
    assert pool._core.idle == 2 and pool._core.in_use == 0
    with pytest.raises(NotBorrowed):
        pool._give_back(conn)


def test_release_ignores_what_a_reset_returns(core_module: ModuleType) -> None:
    pool, _conns = make(core_module)
    conn = pool._take()
    conn.reset_returns = "ignored"
    assert pool.release(conn) is None
    assert pool._core.idle == 2


def test_give_retires_on_a_failed_reset(core_module: ModuleType) -> None:
    pool, _conns = make(core_module)
    conn = pool._take()
    error = RuntimeError("reset failed")
    conn.reset_raises = error
    assert pool._give(conn) is None
    assert pool.calls == [("retire", conn, core_module.RESET_FAILED, error)]
    assert pool._core.size == 1 and pool._core.in_use == 0


def test_give_after_close_retires(core_module: ModuleType) -> None:
    pool, _conns = make(core_module)
    conn = pool._take()
    pool._core.close()
    assert pool._give(conn) is None
    assert conn.resets == 0  # not reset: it is closed
    assert pool.calls == [("retire", conn, core_module.CLOSED, None)]
