"""Every setting of :class:`pypool.Pool` and :class:`pypool.AsyncPool`, once.

:data:`SETTINGS` is the one table of the pools' keyword arguments: for each,
its name, default, type, bounds (in words and as the function that checks
them) and meaning. The pools take their keywords, defaults and validation
from it; their ``__signature__`` (what ``inspect.signature``, ``help()`` and
an IDE show) and the "Settings" section of their docstrings are generated
from it; the command line takes its defaults from it; and the documentation's
settings table is tested against it. Adding a setting is one row here, plus
the code that uses it.

Every bound is checked when the pool is made, with a
:class:`~pypool.ConfigurationError` (a ``ValueError``) that names the
argument and says what to change; an unknown keyword raises ``TypeError``
naming the public class, with the closest known keyword as a suggestion.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from ..errors import ConfigurationError

__all__ = [
    "MIN_LIFETIME",
    "SETTINGS",
    "Setting",
    "Settings",
    "check_run",
    "check_sizes",
    "check_transaction_pooling",
    "docstring_section",
    "refuse_unknown",
    "session_state_reset",
    "signature",
    "take_keywords",
]

#: The least ``max_lifetime``, in seconds. A connection must outlive its own
#: connect and hand-out: below this, one made over a network (milliseconds to
#: tens of milliseconds, a TLS handshake more) is expired, or about to be
#: replaced, by the time it could serve anyone, and a pool with
#: ``max_lifetime=1e-9`` never handed a connection out. 0.1 s is also five
#: times the maintenance thread's shortest interval (0.02 s), so that the
#: replacement ahead of expiry still has a pass to act in.
MIN_LIFETIME: Final = 0.1

_names = itertools.count(1)


# ------------------------------------------------------------------ checks


def _number(name: str, value: object) -> float:
    """``value`` as a float: an int or float, not bool, not NaN, within a
    float's range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"{name} must be a number of seconds, not {type(value).__name__} ({value!r})"
        )
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        raise ConfigurationError(
            f"{name} must be a number of seconds a float can hold, not an integer of "
            f"{len(str(abs(value)))} digits: use math.inf for no limit"
        ) from None
    if math.isnan(seconds):
        raise ConfigurationError(f"{name} must be a number of seconds, not NaN")
    return seconds


def seconds(
    *, none: bool = False, zero: bool = True, least: float = 0.0
) -> Callable[[str, object], float | None]:
    """A check for a number of seconds: ``>= 0`` (``> 0`` unless ``zero``),
    at least ``least``, ``math.inf`` allowed; None allowed with ``none``."""

    def check(name: str, value: object) -> float | None:
        if value is None:
            if none:
                return None
            raise ConfigurationError(f"{name} must be a number of seconds, not None")
        number = _number(name, value)
        if number < 0 or (number == 0 and not zero):
            low = ">= 0" if zero else "> 0"
            raise ConfigurationError(f"{name} must be {low} seconds, not {value!r}")
        if number < least:
            raise ConfigurationError(
                f"{name} must be at least {least} seconds, not {value!r}: a shorter "
                f"{name} leaves a connection no time to serve"
                + (" (None: no limit)" if none else "")
            )
        return number

    return check


def count(low: int) -> Callable[[str, object], int]:
    """A check for an integer ``>= low``."""

    def check(name: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(
                f"{name} must be an integer, not {type(value).__name__} ({value!r})"
            )
        if value < low:
            raise ConfigurationError(f"{name} must be >= {low}, not {value}")
        return value

    return check


def hook(*, false: bool = False) -> Callable[[str, object], Any]:
    """A check for a callable or None (or False, with ``false``)."""

    def check(name: str, value: object) -> Any:
        if value is None or (false and value is False) or callable(value):
            return value
        allowed = "a callable, None or False" if false else "a callable or None"
        raise ConfigurationError(f"{name} must be {allowed}, not {type(value).__name__}")

    return check


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, not {value!r}")
    return value


def _name(name: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a str or None, not {type(value).__name__}")
    return value


def _reset(name: str, value: object) -> Any:
    if isinstance(value, str):
        if not value.isidentifier():
            raise ConfigurationError(
                f"reset must be a method name, a callable, None or False: {value!r} is not "
                "a method name"
            )
        return value
    return hook(false=True)(name, value)


def _adapter(name: str, value: object) -> Any:
    if value is None:
        return None  # the pool's own default
    for attr in ("reset_for", "check", "is_broken", "close"):
        if not callable(getattr(value, attr, None)):
            raise ConfigurationError(
                f"adapter must have reset_for(), check(), is_broken() and close(): {value!r} "
                f"has no {attr}(); pass pypool.dbapi or another adapter"
            )
    return value


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Setting:
    """One keyword argument of the pools."""

    #: The keyword.
    name: str
    #: Its default.
    default: Any
    #: Its type, as written in the signature.
    annotation: str
    #: Its bounds, in words (the documentation's "bounds" column).
    bound: str
    #: Its meaning and why the default is what it is.
    doc: str
    #: Checks a value against the bounds: the value to keep, or
    #: :class:`~pypool.ConfigurationError`.
    check: Callable[[str, object], Any]


#: Every setting, in the order of the signatures.
SETTINGS: Final[tuple[Setting, ...]] = (
    Setting(
        "adapter",
        None,
        "Adapter | None",
        "an object with reset_for, check, is_broken and close",
        "where driver knowledge comes from (reset, check, a broken connection told from a "
        "failed query): ``pypool.dbapi`` for :class:`~pypool.Pool`, a generic one (rollback, "
        "ping, close) for :class:`~pypool.AsyncPool`",
        _adapter,
    ),
    Setting(
        "min_size",
        0,
        "int",
        ">= 0, <= max_size",
        "connections kept open even when idle; 0: connect on demand",
        count(0),
    ),
    Setting(
        "max_size",
        10,
        "int",
        ">= 1",
        "the most connections open at once: a small pool outperforms a large one (the "
        "database runs a few queries per core at once); measure with ``pypool sweep``",
        count(1),
    ),
    Setting(
        "timeout",
        30.0,
        "float",
        "> 0 seconds (inf: no limit)",
        "seconds ``acquire()`` waits before :class:`~pypool.PoolTimeout`, as psycopg_pool "
        "and SQLAlchemy do",
        seconds(zero=False),
    ),
    Setting(
        "max_waiting",
        0,
        "int",
        ">= 0",
        "callers allowed to wait at once (0: no limit); past it, :class:`~pypool.TooManyRequests`",
        count(0),
    ),
    Setting(
        "max_lifetime",
        3600.0,
        "float | None",
        f">= {MIN_LIFETIME} seconds, or None (never)",
        "seconds before a connection is replaced (each gets up to 5% less, at random, so "
        "that they do not expire together), below common server and proxy limits; None: never",
        seconds(none=True, zero=False, least=MIN_LIFETIME),
    ),
    Setting(
        "max_idle",
        600.0,
        "float | None",
        ">= 0 seconds, or None (never)",
        "seconds idle after which a connection is closed (down to ``min_size``) rather than "
        "handed out; None or 0: never",
        seconds(none=True),
    ),
    Setting(
        "max_uses",
        0,
        "int",
        ">= 0",
        "hand-outs before a connection is replaced (0: no limit)",
        count(0),
    ),
    Setting(
        "check",
        None,
        "Any",
        "a callable, None or False",
        "``check(conn)`` before hand-out on connections idle longer than ``check_after``; "
        "None: the adapter's (a ping); False: never. A check of yours keeps the caller's "
        "timeout: bounded by the driver's means (psycopg 3: its socket is shut down at the "
        "deadline), else run in a thread the caller leaves at its deadline (the connection "
        "is closed when the check ends); at least 50 ms",
        hook(false=True),
    ),
    Setting(
        "check_after",
        1.0,
        "float | None",
        ">= 0 seconds, or None",
        "seconds of idleness that make a check worth its round trip (a connection used a "
        "moment ago costs none)",
        seconds(none=True),
    ),
    Setting(
        "reset",
        None,
        "Any",
        "a callable, a method name, None or False",
        "run on every return: None: the adapter's (roll back an open transaction); a method "
        "name, a callable, or False (none); a failed reset discards the connection",
        _reset,
    ),
    Setting(
        "configure",
        None,
        "Any",
        "a callable or None",
        "``configure(conn)`` once on every new connection",
        hook(),
    ),
    Setting(
        "num_workers",
        2,
        "int",
        ">= 1, <= max_size",
        "connects in flight at once; more would only flood a recovering database (left "
        "unset, it is lowered to ``max_size``)",
        count(1),
    ),
    Setting(
        "name",
        None,
        "str | None",
        "a str or None",
        "the pool's name in logs, statistics and thread names; None: ``pool-<n>``",
        _name,
    ),
    Setting(
        "lifo",
        True,
        "bool",
        "True or False",
        "reuse the most recently returned connection first, so that surplus ones go idle "
        "and are retired; False: round-robin",
        _flag,
    ),
    Setting(
        "leak_timeout",
        None,
        "float | None",
        "> 0 seconds, or None",
        "with a number, a connection borrowed longer is reported once, with the stack that "
        "took it (a stack capture on every acquire); None: no reports",
        seconds(none=True, zero=False),
    ),
    Setting(
        "keepalive",
        240.0,
        "float | None",
        "> 0 seconds, or None",
        "idle connections unused this long are checked, so that firewalls and server idle "
        "timeouts (often 300 s and more) do not cut them silently; None: never",
        seconds(none=True, zero=False),
    ),
    Setting(
        "reconnect_timeout",
        300.0,
        "float",
        ">= 0 seconds",
        "after connects have failed this long, ``reconnect_failed(pool)`` is called and an "
        "error logged (the pool keeps trying)",
        seconds(),
    ),
    Setting(
        "reconnect_failed",
        None,
        "Callable[[Any], object] | None",
        "a callable or None",
        "called with the pool when connects have failed for ``reconnect_timeout``",
        hook(),
    ),
    Setting(
        "transaction_pooling",
        False,
        "bool",
        "True or False",
        "set it when the connections go through a pooler in transaction mode (PgBouncer's "
        "``pool_mode = transaction``): the reset then only ends the transaction, and a reset "
        "that clears session state is refused; with psycopg, also pass "
        "``prepare_threshold=None`` to the connect",
        _flag,
    ),
)

_BY_NAME: Final = {s.name: s for s in SETTINGS}


# ------------------------------------------------------------------ keywords


def take_keywords(owner: str, given: Mapping[str, Any], private: tuple[str, ...] = ()) -> None:
    """Raises ``TypeError`` naming ``owner`` (the public class) for a keyword
    of ``given`` that is neither a setting nor one of ``private``, with the
    closest setting as a suggestion."""
    refuse_unknown(owner, given, list(_BY_NAME), private)


def refuse_unknown(
    owner: str, given: Mapping[str, Any], known: Iterable[str], private: tuple[str, ...] = ()
) -> None:
    """Raises ``TypeError`` naming ``owner`` (the public class) for a keyword
    of ``given`` that is neither one of ``known`` nor one of ``private``, with
    the closest of ``known`` as a suggestion."""
    names = list(known)
    for key in given:
        if key in names or key in private:
            continue
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"{owner}() got an unexpected keyword argument {key!r}{hint}")


def signature(
    factory_annotation: str = "Callable[[], Any]", *, method: bool = False
) -> inspect.Signature:
    """The signature of a pool class: ``factory``, then every setting as a
    keyword-only parameter with its default (after ``self`` for the
    ``__init__`` method, with ``method``)."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] if method else []
    params += [
        inspect.Parameter(
            "factory", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=factory_annotation
        )
    ]
    params += [
        inspect.Parameter(
            s.name, inspect.Parameter.KEYWORD_ONLY, default=s.default, annotation=s.annotation
        )
        for s in SETTINGS
    ]
    return inspect.Signature(params, return_annotation=inspect.Signature.empty)


def docstring_section(indent: str = "    ") -> str:
    """The "Settings" section of a pool class's docstring: each setting,
    its default, its bounds and its meaning (indented as the docstring's
    body is)."""
    lines = ["Settings (keyword arguments; the table is :data:`pypool.pool.SETTINGS`):", ""]
    for s in SETTINGS:
        lines.append(f"- ``{s.name}={s.default!r}`` ({s.bound}): {s.doc}.")
    return "\n".join(f"{indent}{line}" if line else "" for line in lines)


class ClassSignature:
    """``__signature__`` for a class and the classes bound to a core from it
    (``with_core``), and for a subclass that keeps the class's constructor;
    a subclass with a constructor of its own (``__init__`` or ``__new__``)
    shows that one's parameters. ``inspect`` must not be left to find the
    constructor itself: before Python 3.11 it takes the base's
    ``__new__(*args, **kwargs)`` over any ``__init__``."""

    def __init__(self, sig: inspect.Signature) -> None:
        self._sig = sig
        self._owner: type | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self._owner = owner

    def __get__(self, obj: object, objtype: type | None = None) -> inspect.Signature | None:
        if obj is not None or objtype is None:
            return None
        for cls in objtype.__mro__:
            public = cls.__dict__.get("_public", cls)
            if public is self._owner:
                return self._sig
            own = cls.__dict__.get("__init__") or cls.__dict__.get("__new__")
            if own is not None and "_public" not in cls.__dict__:
                if isinstance(own, staticmethod):
                    own = own.__func__
                parameters = list(inspect.signature(own).parameters.values())
                return inspect.Signature(parameters[1:])  # without self (or cls)
        return None


# ------------------------------------------------------------------ cross-checks


def check_sizes(min_size: object, max_size: object) -> tuple[int, int]:
    """Validated ``(min_size, max_size)``."""
    lo = count(0)("min_size", min_size)
    hi = count(1)("max_size", max_size)
    if lo > hi:
        raise ConfigurationError(
            f"min_size ({lo}) must not exceed max_size ({hi}): lower min_size or raise max_size"
        )
    return lo, hi


_F = TypeVar("_F", bound=Callable[..., Any])


def check_run(retries: object, backoff: object) -> None:
    """Checks ``run()``'s ``retries`` (an integer >= 0) and ``backoff`` (a
    number of seconds >= 0 whose longest pause, ``backoff * 2 **
    (retries - 1)``, a sleep can take), before any connection is touched."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigurationError(f"retries must be an integer >= 0, not {retries!r}")
    pause = seconds()("backoff", backoff)
    assert pause is not None
    try:
        longest = pause * 2 ** (retries - 1) if pause and retries else 0.0
    except OverflowError:
        longest = math.inf
    if longest > threading.TIMEOUT_MAX:
        raise ConfigurationError(
            f"backoff ({backoff!r}) with retries={retries} would sleep longer than a sleep "
            f"can ({threading.TIMEOUT_MAX:.0f} s) before the last retry: lower backoff or "
            "retries"
        )


#: The attribute that marks a reset as one that clears session state (see
#: :func:`session_state_reset`).
CLEARS_SESSION_STATE = "clears_session_state"


def session_state_reset(reset: _F) -> _F:
    """Marks ``reset`` as a reset that clears session state (settings, roles,
    prepared statements, ``LISTEN``, advisory locks, temporary tables), such
    as ``pypool.psycopg.discard_all``: a pool with ``transaction_pooling=True``
    refuses it."""
    setattr(reset, CLEARS_SESSION_STATE, True)
    return reset


def check_transaction_pooling(transaction_pooling: object, reset: object) -> bool:
    """Validated ``transaction_pooling``; refuses a session-state reset
    with it.

    Behind a pooler in transaction mode (PgBouncer's ``pool_mode =
    transaction``) a client's session is not its own between transactions,
    so there is no session state of the client's to clear: such a reset
    would run on whichever server connection the pooler lends for it, clear
    state another client may be relying on, and cost a round trip on every
    return. A ConfigurationError rather than a warning: the two settings
    contradict each other, and a warning in a log would leave that cost and
    that harm in place.
    """
    _flag("transaction_pooling", transaction_pooling)
    assert isinstance(transaction_pooling, bool)
    if transaction_pooling and getattr(reset, CLEARS_SESSION_STATE, False):
        name = getattr(reset, "__qualname__", None) or repr(reset)
        raise ConfigurationError(
            f"transaction_pooling=True cannot go with reset={name}, which clears session "
            "state: behind a transaction pooler a connection's session is not the client's "
            "between transactions, so the reset would clear the state of whichever server "
            "connection the pooler lends it. Leave reset unset (a rollback of an open "
            "transaction), or declare transaction_pooling=False for a direct or "
            "session-mode connection"
        )
    return transaction_pooling


class Settings:
    """Every setting of one pool, checked once against :data:`SETTINGS`.

    ``given`` holds the keywords the caller passed; the others take the
    table's defaults. ``strict`` says whether the caller is the public class
    itself (its keywords are the user's): then a ``num_workers`` above
    ``max_size`` is refused; a subclass with its own constructor (the
    psycopg_pool-compatible pools, whose ``num_workers`` defaults to 3
    whatever the size) gets it lowered to ``max_size``, as an unset one is.
    """

    adapter: Any
    min_size: int
    max_size: int
    timeout: float
    max_waiting: int
    max_lifetime: float | None
    max_idle: float
    max_uses: int
    check: Any
    check_after: float | None
    reset: Any
    configure: Any
    num_workers: int
    name: str
    lifo: bool
    leak_timeout: float | None
    keepalive: float | None
    reconnect_timeout: float
    reconnect_failed: Any
    transaction_pooling: bool

    def __init__(self, factory: object, given: Mapping[str, Any], *, strict: bool = True) -> None:
        if not callable(factory):
            hint = ""
            if isinstance(factory, str):
                hint = (
                    ": pass a function that connects, for example "
                    "pypool.dbapi.connect_factory(driver.connect, dsn)"
                )
            raise ConfigurationError(
                f"factory must be a callable returning a new connection, "
                f"not {type(factory).__name__}{hint}"
            )
        self.factory: Callable[[], Any] = factory
        for s in SETTINGS:
            value = given.get(s.name, s.default)
            setattr(self, s.name, s.check(s.name, value))
        self.min_size, self.max_size = check_sizes(self.min_size, self.max_size)
        if self.max_lifetime is not None and math.isinf(self.max_lifetime):
            self.max_lifetime = None
        idle = self.max_idle
        self.max_idle = 0.0 if idle is None or math.isinf(idle) else idle
        if self.num_workers > self.max_size:
            if strict and "num_workers" in given:
                raise ConfigurationError(
                    f"num_workers ({self.num_workers}) must not exceed max_size "
                    f"({self.max_size}): no more than max_size connects can be in flight, "
                    "so lower num_workers (or raise max_size)"
                )
            self.num_workers = self.max_size
        given_name = _name("name", given.get("name"))
        self.name = given_name if given_name is not None else f"pool-{next(_names)}"
        check_transaction_pooling(self.transaction_pooling, self.reset)
        if self.transaction_pooling and self.reset is None and self.adapter is not None:
            # An adapter whose own reset clears session state offers one that
            # only ends the transaction.
            self.reset = getattr(self.adapter, "transaction_pooling_reset", None)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        for s in SETTINGS:
            yield s.name, getattr(self, s.name)
