"""``NullConnectionPool``: psycopg_pool's sync null pool."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from ..pool.threaded import PoolMethods
from .base import NullShared, null_signature
from .errors import PoolTimeout
from .pool import CT, ConnectionPool, PsycopgMethods

__all__ = ["NullConnectionPool"]


class _NullMethods(NullShared):
    _core: Any

    def __init__(
        self,
        conninfo: str | Callable[[], str] = "",
        *,
        min_size: int = 0,
        max_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        max_size = self._null_arguments(min_size, max_size, kwargs)
        super().__init__(conninfo, min_size=0, max_size=max_size, **kwargs)  # type: ignore[call-arg]

    def putconn(self, conn: Any) -> None:
        """Return a connection: closed, unless a caller waits for one."""
        if self._core.waiting and not self._core.closed:
            self.release(conn)  # type: ignore[attr-defined]
        else:
            self.discard(conn)  # type: ignore[attr-defined]

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change max_size during runtime; min_size must remain 0."""
        max_size = self._null_resize(min_size, max_size)
        if not self._resize_not_running(0, max_size):  # type: ignore[attr-defined]
            PoolMethods.resize(self, 0, max_size)  # type: ignore[arg-type]

    def wait(self, timeout: float = 30.0) -> None:
        """Checks that a connection can be made: one is made and closed
        (a null pool keeps none); PoolTimeout (the pool closed) otherwise."""
        refused = self._not_usable()  # type: ignore[attr-defined]
        if refused is not None:
            raise refused
        try:
            conn = self.getconn(timeout)  # type: ignore[attr-defined]
        except PoolTimeout as exc:
            self.close()  # type: ignore[attr-defined]
            raise PoolTimeout(f"pool initialization incomplete after {timeout} sec") from (
                exc.__cause__
            )
        self.putconn(conn)


# What inspect.signature() shows: the arguments **kwargs takes on.
_NullMethods.__init__.__signature__ = null_signature(PsycopgMethods.__init__)  # type: ignore[attr-defined]


class NullConnectionPool(_NullMethods, ConnectionPool[CT]):  # type: ignore[misc]
    """psycopg_pool's ``NullConnectionPool``: no connection is kept; each is
    made on demand and closed when returned (or handed straight to a caller
    waiting for one), while ``max_size`` bounds how many are open at once."""

    __module__ = "pypool.psycopg"
    _hot_aliases: ClassVar[dict[str, str]] = {"getconn": "acquire"}
