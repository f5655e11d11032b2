"""``NullConnectionPool``: psycopg_pool's sync null pool."""

from __future__ import annotations

from typing import Any, ClassVar

import psycopg

from ..pool.settings import ClassSignature
from ..pool.threaded import PoolMethods
from .base import NullShared, psycopg_init
from .errors import PoolTimeout
from .pool import CT, ConnectionPool
from .settings import docstring_section, signature

__all__ = ["NullConnectionPool"]


class _NullMethods(NullShared):
    _core: Any

    # PSYCOPG_SETTINGS, with min_size 0 (NullConnectionPool.__signature__).
    __init__ = psycopg_init(psycopg.Connection, null=True)

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


class NullConnectionPool(_NullMethods, ConnectionPool[CT]):  # type: ignore[misc]
    """psycopg_pool's ``NullConnectionPool``: no connection is kept; each is
    made on demand and closed when returned (or handed straight to a caller
    waiting for one), while ``max_size`` bounds how many are open at once."""

    __module__ = "pypool.psycopg"
    __signature__ = ClassSignature(signature(psycopg.Connection, null=True))
    _hot_aliases: ClassVar[dict[str, str]] = {"getconn": "acquire"}


NullConnectionPool.__doc__ = (
    f"{NullConnectionPool.__doc__}\n{docstring_section(psycopg.Connection, null=True)}\n"
)
