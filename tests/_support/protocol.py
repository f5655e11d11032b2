"""The core's waiting protocol under interference: small scenarios that
reach every named call-out point, actions to run at one of them, and the
invariants to check after.

A *scenario* drives one core (threads waiting, a ticket, a close, a reap,
a fill) and keeps a :class:`Ledger` of every connection it made. An
*action* runs once, in whatever thread first reaches the armed point: a
release of a borrowed connection, a garbage collection whose finalizer
releases one or resurrects one, a raise (``Exception`` or
``KeyboardInterrupt``), a ``close()``, a fork. :func:`run` plays one
scenario with one (point, action) armed and returns what it saw;
:func:`check` asserts the invariants:

- no thread hangs;
- no caller timed out while a connection it could take was idle
  (``PoolTimeout.idle == 0``), and no ticket is left waiting beside an idle
  connection (a ticket has no wait slices to find it);
- the counts balance, nobody is left waiting, and every connection made is
  accounted for exactly once: given back to the test by ``close()`` or by a
  ``release()`` that returned False, or recovered as abandoned.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pypool.errors import NotBorrowed, PoolClosed, PoolError, PoolTimeout

from .interleave import interleaving, plant

#: Objects resurrected by their own finalizer (kept alive here for good).
RESURRECTED: list[Any] = []


class Conn:
    """A connection that allows weak references; one marked ``resurrect``
    makes itself reachable again when it is finalized."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.resurrect = False

    def __del__(self) -> None:
        if self.resurrect:
            self.resurrect = False
            RESURRECTED.append(self)

    def __repr__(self) -> str:
        return f"<Conn {self.name}>"


class Interference(Exception):
    """What the "raise" action raises."""


@dataclass
class Ledger:
    """Where every connection of a scenario is."""

    pool: Any
    made: set[str] = field(default_factory=set)
    maybe_held: list[Any] = field(default_factory=list)  # borrowed by someone here
    tickets: list[Any] = field(default_factory=list)
    freed: list[str] = field(default_factory=list)  # given back to the test
    abandoned: list[str] = field(default_factory=list)  # dropped while borrowed
    timeouts: list[PoolTimeout] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # unexpected outcomes
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: What an interference may raise out of a call (the call completed or
    #: never started; the ledger then finds out which).
    tolerate: tuple[type[BaseException], ...] = ()

    def new(self, name: str) -> Conn:
        conn = Conn(name)
        self.made.add(name)
        return conn

    def fill(self, name: str) -> Conn:
        conn = self.new(name)
        self.pool.fill(self.pool.reserve(), conn)
        return conn

    def hold(self, conn: Any) -> None:
        with self.lock:
            self.maybe_held.append(conn)

    def closed(self, conns: list[Any]) -> None:
        with self.lock:
            self.freed.extend(c.name for c in conns)

    def release(self, conn: Any) -> None:
        """Gives ``conn`` back if this test may still hold it."""
        with self.lock:
            if not any(c is conn for c in self.maybe_held):
                return
            self.maybe_held = [c for c in self.maybe_held if c is not conn]
        try:
            if self.pool.release(conn) is False:
                with self.lock:
                    self.freed.append(conn.name)
        except NotBorrowed:
            pass  # given back already (by an action), or handed on
        except (Interference, KeyboardInterrupt, *self.tolerate):
            pass  # an action raised in the release, which completed

    def outcome(self, what: str, fn: Callable[[], Any]) -> None:
        """Runs an acquire-like call; keeps the connection it returns."""
        try:
            conn = fn()
        except PoolTimeout as exc:
            self.timeouts.append(exc)
        except (PoolClosed, Interference, KeyboardInterrupt, *self.tolerate):
            pass
        except BaseException as exc:
            self.errors.append(f"{what}: {exc!r}")
        else:
            self.hold(conn)

    def settle(self) -> None:
        """Gives everything back and closes the pool."""
        for ticket in list(self.tickets):
            try:
                if ticket.done:
                    self.hold(ticket.result())
                else:
                    ticket.cancel()
            except (PoolError, Interference, KeyboardInterrupt, *self.tolerate):
                pass
        for conn in list(self.maybe_held):
            self.release(conn)
        for _ in range(2):  # the second finds what came back idle after the first
            try:
                self.closed(self.pool.close())
            except (Interference, KeyboardInterrupt, *self.tolerate):
                pass  # a callback raised in it; the close completed


# ------------------------------------------------------------------ actions


class Env:
    """What an action may use: the pool, the ledger, the borrowed spare."""

    def __init__(self, core_module: ModuleType, pool: Any, ledger: Ledger) -> None:
        self.core_module = core_module
        self.pool = pool
        self.ledger = ledger
        self.spare: list[Any] = []  # a borrowed connection no scenario step uses
        self.forks: list[int] = []  # exit statuses of forked children


def _spare(env: Env) -> Any:
    with env.ledger.lock:
        if not env.spare:
            return None
        conn = env.spare.pop()
        env.ledger.maybe_held = [c for c in env.ledger.maybe_held if c is not conn]
        return conn


def act_release(env: Env) -> None:
    conn = _spare(env)
    if conn is not None and env.pool.release(conn) is False:
        env.ledger.freed.append(conn.name)


def act_gc_release(env: Env, resurrect: bool = False) -> None:
    conn = _spare(env)
    if conn is None:
        return

    def give_back() -> None:
        if env.pool.release(conn) is False:
            env.ledger.freed.append(conn.name)

    plant(give_back, resurrect=resurrect)
    gc.collect()


def act_abandon(env: Env, resurrect: bool = False) -> None:
    conn = _spare(env)
    if conn is None:
        return
    env.ledger.abandoned.append(conn.name)
    conn.resurrect = resurrect
    conn.me = conn  # a cycle: the collector frees it
    del conn
    gc.collect()


def act_raise(env: Env) -> None:
    raise Interference("raised at a call-out point")


def act_interrupt(env: Env) -> None:
    raise KeyboardInterrupt


def act_close(env: Env) -> None:
    env.ledger.closed(env.pool.close())


def act_fork(env: Env) -> None:
    """Forks here; the child checks that its core starts empty and serves
    its own waiter with its own connection, then leaves at once."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            pool = env.pool
            ok = pool.size == 0 and pool.waiting == 0 and pool.in_use == 0
            ok = ok and all(not t.cancel() for t in env.ledger.tickets)
            ok = ok and pool.waiting == 0
            if not pool.closed:
                ticket = pool.enqueue(lambda t: None)
                conn = Conn("child")
                pool.fill(pool.reserve(), conn)
                ok = ok and ticket.done and ticket.result() is conn
                ok = ok and pool.release(conn) is True and pool.idle == 1
            code = 0 if ok else 3
        finally:
            os._exit(code)
    env.forks.append(os.waitpid(pid, 0)[1])


ACTIONS: dict[str, Callable[[Env], None]] = {
    "release": act_release,
    "gc_release": act_gc_release,
    "gc_resurrect": lambda env: act_gc_release(env, resurrect=True),
    "abandon": act_abandon,
    "abandon_resurrect": lambda env: act_abandon(env, resurrect=True),
    "raise": act_raise,
    "interrupt": act_interrupt,
    "close": act_close,
}

# ---------------------------------------------------------------- scenarios


def _wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0005)
    return True


def _thread(ledger: Ledger, name: str, fn: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=ledger.outcome, args=(name, fn), name=name, daemon=True)
    thread.start()
    return thread


def _ticket(ledger: Ledger) -> None:
    with contextlib.suppress(PoolClosed, Interference, KeyboardInterrupt):
        ledger.tickets.append(ledger.pool.enqueue(lambda t: None))


def _step(fn: Callable[[], Any]) -> Any:
    """One step of a scenario's main thread: an action may raise in it."""
    try:
        return fn()
    except (PoolClosed, Interference, KeyboardInterrupt):
        return None


def _waiter_served(env: Env, timeout: float = 5.0) -> list[threading.Thread]:
    pool, ledger = env.pool, env.ledger
    main = ledger.maybe_held[0]
    w = _thread(ledger, "W", lambda: pool.acquire(timeout=timeout))
    _wait_until(lambda: pool.waiting >= 1 or not w.is_alive() or pool.closed)
    ledger.release(main)
    return [w]


def scenario_release_notify(env: Env) -> list[threading.Thread]:
    """A thread waits; a release makes a connection idle and wakes it."""
    return _waiter_served(env)


def scenario_release_handoff(env: Env) -> list[threading.Thread]:
    """A thread waits; a release hands it a connection directly."""
    return _waiter_served(env)


def scenario_thread_then_ticket(env: Env) -> list[threading.Thread]:
    """A thread waits, a ticket behind it; one release. Whatever happens to
    the thread, the ticket must not wait while a connection is idle."""
    pool, ledger = env.pool, env.ledger
    main = ledger.maybe_held[0]
    w = _thread(ledger, "W", lambda: pool.acquire(timeout=5))
    _wait_until(lambda: pool.waiting >= 1 or not w.is_alive() or pool.closed)
    _step(lambda: _ticket(ledger))
    ledger.release(main)
    return [w]


def scenario_timeout(env: Env) -> list[threading.Thread]:
    """A thread waits and times out."""
    pool = env.pool
    return [_thread(env.ledger, "W", lambda: pool.acquire(timeout=0.06))]


def scenario_ticket(env: Env) -> list[threading.Thread]:
    """A ticket waits; a release hands it a connection."""
    _step(lambda: _ticket(env.ledger))
    env.ledger.release(env.ledger.maybe_held[0])
    return []


def scenario_close(env: Env) -> list[threading.Thread]:
    """A thread and a ticket wait; the pool closes."""
    pool = env.pool
    w = _thread(env.ledger, "W", lambda: pool.acquire(timeout=5))
    _wait_until(lambda: pool.waiting >= 1 or not w.is_alive() or pool.closed)
    _step(lambda: _ticket(env.ledger))
    _step(lambda: env.ledger.closed(pool.close()))
    return [w]


def scenario_fill(env: Env) -> list[threading.Thread]:
    """A thread waits; a new connection goes to it."""
    pool, ledger = env.pool, env.ledger
    w = _thread(ledger, "W", lambda: pool.acquire(timeout=5))
    _wait_until(lambda: pool.waiting >= 1 or not w.is_alive() or pool.closed)

    def fill() -> None:
        slot = pool.reserve()
        if slot is not None:
            conn = ledger.new("filled")
            try:
                pool.fill(slot, conn)
            except PoolClosed:
                ledger.freed.append(conn.name)

    _step(fill)
    return [w]


def scenario_reap(env: Env) -> list[threading.Thread]:
    """A borrowed connection is dropped; the next operation reaps it."""
    pool, ledger = env.pool, env.ledger
    main = ledger.maybe_held.pop(0)
    ledger.abandoned.append(main.name)
    del main
    gc.collect()
    _step(pool.stats)
    return []


#: name -> (scenario, handoff_after, connections made, extra room)
SCENARIOS: dict[str, tuple[Callable[[Env], list[threading.Thread]], float, int]] = {
    "release_notify": (scenario_release_notify, 30.0, 2),
    "release_handoff": (scenario_release_handoff, 0.0, 2),
    "thread_then_ticket": (scenario_thread_then_ticket, 30.0, 2),
    "timeout": (scenario_timeout, 30.0, 2),
    "ticket": (scenario_ticket, 30.0, 2),
    "close": (scenario_close, 30.0, 2),
    "fill": (scenario_fill, 0.0, 2),
    "reap": (scenario_reap, 30.0, 2),
}


@dataclass
class Run:
    """What one scenario saw."""

    scenario: str
    point: str | None
    action: str | None
    fired: bool
    points: set[str]
    ledger: Ledger
    hung: list[str]
    stranded: list[str]  # tickets that waited while connections were idle
    forks: list[int]
    abandon_reports: list[int]


def run(
    core_module: ModuleType,
    scenario: str,
    point: str | None = None,
    action: str | Callable[[Env], None] | None = None,
) -> Run:
    """Plays ``scenario`` with ``action`` armed at ``point`` (None: nothing
    armed, to see which points the scenario reaches)."""
    play, handoff_after, n = SCENARIOS[scenario]
    reports: list[int] = []
    pool = core_module.CorePool(n + 1, handoff_after=handoff_after, on_abandon=reports.append)
    ledger = Ledger(pool)
    env = Env(core_module, pool, ledger)
    for k in range(n):
        ledger.fill(f"c{k}")
    borrowed = [pool.try_acquire() for _ in range(n)]
    ledger.maybe_held.extend(borrowed)  # [0]: the scenario's, [1]: the actions' spare
    env.spare.append(borrowed[1])
    del borrowed
    perform = ACTIONS[action] if isinstance(action, str) else action
    seen: set[str] = set()
    armed = [point is not None]
    fired = [False]
    guard = threading.Lock()

    def hook(at: str, core: Any) -> None:
        if core is not pool:
            return
        seen.add(at)
        with guard:
            if not armed[0] or at != point:
                return
            armed[0] = False
        fired[0] = True
        assert perform is not None
        perform(env)

    with interleaving(core_module, hook):
        threads = _step(lambda: play(env)) or []
        for t in threads:
            t.join(20)
    hung = [t.name for t in threads if t.is_alive()]
    stranded = []
    if not pool.closed and pool.idle and any(not t.done for t in ledger.tickets):
        stranded.append(f"{sum(not t.done for t in ledger.tickets)} ticket(s), idle {pool.idle}")
    if not hung:
        ledger.settle()
        _step(pool.stats)  # reap what the settling dropped
        gc.collect()
        _step(pool.stats)
    return Run(
        scenario,
        point,
        None if action is None else str(action),
        fired[0],
        seen,
        ledger,
        hung,
        stranded,
        env.forks,
        reports,
    )


def check(result: Run) -> list[str]:
    """The invariants after a run; an empty list when they all hold."""
    problems: list[str] = []
    ledger, pool = result.ledger, result.ledger.pool
    if result.hung:
        return [f"threads hang: {result.hung}"]
    problems += ledger.errors
    problems += [f"a ticket waits while a connection is idle: {s}" for s in result.stranded]
    for exc in ledger.timeouts:
        if exc.idle != 0:
            problems.append(f"timed out with {exc.idle} connection(s) idle: {exc}")
    stats = pool.stats()
    if stats["waiting"] != 0:
        problems.append(f"{stats['waiting']} waiter(s) left queued")
    if stats["size"] != stats["idle"] + stats["in_use"] + stats["connecting"] + stats["claimed"]:
        problems.append(f"counts do not balance: {stats}")
    if (stats["size"], stats["in_use"]) != (0, 0):
        problems.append(f"slots still in use after everything was given back: {stats}")
    accounted = ledger.freed + ledger.abandoned
    if sorted(accounted) != sorted(ledger.made):
        missing = sorted(ledger.made - set(accounted))
        twice = sorted({n for n in accounted if accounted.count(n) > 1})
        problems.append(f"connections not accounted for: missing {missing}, twice {twice}")
    if stats["abandoned"] != len(ledger.abandoned):
        problems.append(f"abandoned {stats['abandoned']}, expected {len(ledger.abandoned)}")
    if any(status != 0 for status in result.forks):
        problems.append(f"a forked child found its core wrong: {result.forks}")
    return problems
