"""Running code inside a core operation: the cores' test hook at their named
call-out points, and garbage collections that run finalizers at an
allocation.

``points(core_module)`` lists a core's call-out points;
``interleaving(core_module, hook)`` installs ``hook(point, core)`` for the
length of a ``with`` block. ``plant(action)`` leaves garbage whose finalizer
runs ``action``; ``finalizer_at_allocation(k, action)`` makes the collector
run it at about the ``k``-th allocation inside a ``with`` block.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, ClassVar

Hook = Callable[[str, Any], object]


def points(core_module: ModuleType) -> tuple[str, ...]:
    """The named call-out points of a core, in the order they are listed."""
    return tuple(core_module._CALL_OUT_POINTS)


@contextlib.contextmanager
def interleaving(core_module: ModuleType, hook: Hook | None) -> Iterator[None]:
    """Runs ``hook(point, core)`` at every call-out point of ``core_module``
    within the block."""
    previous = core_module._set_interleave_hook(hook)
    try:
        yield
    finally:
        core_module._set_interleave_hook(previous)


class Finalizer:
    """What a planted finalizer did: ``ran`` once it ran, ``error`` what its
    action raised (a finalizer's exception is only printed)."""

    def __init__(self) -> None:
        self.ran = False
        self.error: BaseException | None = None


class _Garbage:
    resurrected: ClassVar[list[_Garbage]] = []

    def __init__(self, action: Callable[[], object], record: Finalizer, resurrect: bool) -> None:
        self.me = self  # a reference cycle: only the collector frees it
        self.action: Callable[[], object] | None = action
        self.record = record
        self.resurrect = resurrect

    def __del__(self) -> None:
        action, self.action = self.action, None
        if action is None:
            return
        self.record.ran = True
        if self.resurrect:
            _Garbage.resurrected.append(self)  # alive again, its finalizer spent
        try:
            action()
        except BaseException as exc:
            self.record.error = exc


def plant(action: Callable[[], object], resurrect: bool = False) -> Finalizer:
    """Leaves unreachable garbage whose finalizer runs ``action`` at the next
    collection (``resurrect``: and makes itself reachable again)."""
    record = Finalizer()
    _Garbage(action, record, resurrect)
    return record


@contextlib.contextmanager
def finalizer_at_allocation(k: int, action: Callable[[], object]) -> Iterator[Finalizer]:
    """Within the block, the collector runs at about the ``k``-th allocation
    of a tracked object, and its first collection runs a finalizer that does
    ``action()``. Where exactly that lands depends on the interpreter: tests
    sweep ``k`` over a range."""
    thresholds = gc.get_threshold()
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    record = plant(action)
    gc.set_threshold(k)
    gc.enable()
    try:
        yield record
    finally:
        gc.set_threshold(*thresholds)
        if not enabled:
            gc.disable()


class Gate:
    """Where a thread is held: ``reached`` is set when it arrives, and it
    goes on when ``open()`` is called."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.opened = threading.Event()

    def open(self) -> None:
        self.opened.set()

    def wait_reached(self, timeout: float = 30.0) -> None:
        assert self.reached.wait(timeout), "the thread never reached its gate"


class Choreography:
    """A hook for one core that logs, per thread (by name), the call-out
    points each passes, and holds a thread at a point (``hold``) or raises
    in it there (``raise_at``), once."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.log: dict[str, list[str]] = defaultdict(list)
        self._holds: dict[tuple[str, str], Gate] = {}
        self._raises: dict[tuple[str, str], BaseException] = {}
        self._lock = threading.Lock()

    def hold(self, thread: str, point: str) -> Gate:
        gate = Gate()
        with self._lock:
            self._holds[thread, point] = gate
        return gate

    def raise_at(self, thread: str, point: str, exc: BaseException) -> None:
        with self._lock:
            self._raises[thread, point] = exc

    def __call__(self, point: str, core: Any) -> None:
        if core is not self.core:
            return
        name = threading.current_thread().name
        with self._lock:
            self.log[name].append(point)
            gate = self._holds.pop((name, point), None)
            exc = self._raises.pop((name, point), None)
        if gate is not None:
            gate.reached.set()
            assert gate.opened.wait(60), f"{name} held at {point} for good"
        if exc is not None:
            raise exc


@contextlib.contextmanager
def collect_at_allocation(k: int) -> Iterator[None]:
    """Within the block, the collector runs at about the ``k``-th allocation
    of a tracked object, on whatever garbage exists (make it with the
    collector paused: ``gc.disable()`` first, this turns it back on)."""
    thresholds = gc.get_threshold()
    gc.set_threshold(k)
    gc.enable()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
