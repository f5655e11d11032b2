"""A storm of real signals: ``KeyboardInterrupt`` raised in the main thread
at random moments, by a signal handler, as a Ctrl-C does.

A one-shot interval timer (``signal.setitimer``) fires ``SIGALRM`` every
``low``..``high`` seconds, at random, re-armed by its own handler; the
handler raises ``KeyboardInterrupt`` (through ``signal.default_int_handler``,
Python's own SIGINT handler) while the storm is *armed*. The loop that
drives the pool arms it around each operation and disarms it first thing in
its ``except KeyboardInterrupt`` clause, so an interrupt never escapes the
loop itself. The kernel's timer needs no GIL, so the signals land wherever
the main thread happens to be: in pypool's code, a driver's, or the test's.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any


class Storm:
    """``with Storm(low, high) as storm: storm.run(op, seconds)``."""

    def __init__(self, low: float = 100e-6, high: float = 1e-3, seed: int | None = None) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signal handlers run in the main thread only")
        self.low = low
        self.high = high
        self.random = random.Random(seed)
        self.armed = False
        self.active = False
        self.signals = 0  # handled while armed
        self.interrupts = 0  # KeyboardInterrupts the loop caught
        self.completed = 0  # operations that ran to their end
        self.unraisable = 0  # interrupts that landed in a finalizer
        self._previous: Any = None
        self._previous_hook: Any = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if not self.active:
            return
        signal.setitimer(signal.ITIMER_REAL, self.random.uniform(self.low, self.high))
        # Never in run()'s own frame: an interrupt landing in its except
        # clause, before it disarms, would escape the storm into the runner.
        # Anywhere below it (the operation, its cleanup of an earlier
        # interrupt) is fair game.
        if self.armed and (frame is None or frame.f_code is not Storm.run.__code__):
            self.signals += 1
            signal.default_int_handler(signal.SIGINT, frame)

    def _unraisable(self, unraisable: Any) -> None:
        self.unraisable += 1

    def __enter__(self) -> Storm:
        # An interrupt that lands in a finalizer (a weakref callback, a
        # __del__) cannot propagate and is reported as unraisable: counted
        # here, as the test runner's own hook could itself be interrupted.
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        self._previous = signal.signal(signal.SIGALRM, self._handler)
        self.active = True
        signal.setitimer(signal.ITIMER_REAL, self.high)
        return self

    def __exit__(self, *exc: object) -> None:
        self.armed = False
        self.active = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        time.sleep(0.01)  # a signal already on its way lands here, disarmed
        signal.signal(signal.SIGALRM, self._previous)
        sys.unraisablehook = self._previous_hook

    def run(self, op: Callable[[], object], seconds: float) -> None:
        """Calls ``op()`` again and again for ``seconds``, under the storm;
        any other exception than KeyboardInterrupt ends the run (the test
        fails with it)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.armed = True
                op()
                self.armed = False
                self.completed += 1
            except KeyboardInterrupt:
                self.armed = False
                self.interrupts += 1
            if time.monotonic() >= deadline:
                break

    def __repr__(self) -> str:
        return (
            f"<Storm {self.signals} signals, {self.interrupts} interrupts, "
            f"{self.completed} completed, {self.unraisable} in finalizers>"
        )
