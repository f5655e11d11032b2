"""What ``pypool sweep`` reads from, and sets on, PgBouncer's admin console.

The admin console (the database ``pgbouncer`` of a running PgBouncer, for a
user in its ``admin_users``) speaks only the simple query protocol, so its
commands go through psycopg's ``ClientCursor``. A client of an ordinary
database cannot tell it talks to PgBouncer (1.18 does not say so), so the
sweep learns the bouncer's limits here, not from PostgreSQL's settings.
"""

from __future__ import annotations

from typing import Any

__all__ = ["connect_admin", "limits", "server_connections", "set_default_pool_size"]

#: ``SHOW POOLS`` columns that count server connections.
SERVER_COLUMNS = ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")


def connect_admin(psycopg: Any, admin_dsn: str) -> Any:
    """An autocommit connection to the admin console."""
    return psycopg.connect(
        admin_dsn, autocommit=True, connect_timeout=5, cursor_factory=psycopg.ClientCursor
    )


def _show(admin: Any, what: str) -> list[dict[str, Any]]:
    cur = admin.execute(f"SHOW {what}")
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def limits(admin: Any, dbname: str, user: str) -> dict[str, Any]:
    """What the bouncer allows the sweep's database and user.

    - ``max_client_conn`` and ``clients_in_use`` (every client connection,
      this admin one included): the client connections the sweep may open
      are the difference;
    - ``pool_size`` (the database's, else ``default_pool_size``) plus
      ``reserve_pool``, bounded by ``max_db_connections`` and
      ``max_user_connections`` (0: no bound): ``server_limit``, the server
      connections PostgreSQL sees from this database and user, however many
      clients there are;
    - ``pool_mode`` of the database (else the default one).

    Raises LookupError when the bouncer does not serve ``dbname``.
    """
    config = {row["key"]: row["value"] for row in _show(admin, "CONFIG")}
    database = next((row for row in _show(admin, "DATABASES") if row["name"] == dbname), None)
    if database is None:
        raise LookupError(f"PgBouncer serves no database named {dbname!r}")
    lists = {row["list"]: _int(row["items"]) for row in _show(admin, "LISTS")}
    pool_size = _int(database.get("pool_size"))
    reserve = _int(database.get("reserve_pool"))
    server_limit = pool_size + reserve
    for key in ("max_db_connections", "max_user_connections"):
        bound = _int(config.get(key))
        if bound:
            server_limit = min(server_limit, bound)
    db_bound = _int(database.get("max_connections"))
    if db_bound:
        server_limit = min(server_limit, db_bound)
    version = _show(admin, "VERSION")
    return {
        "version": str(next(iter(version[0].values()))) if version else None,
        "database": dbname,
        "user": user,
        "pool_mode": database.get("pool_mode") or config.get("pool_mode"),
        "max_client_conn": _int(config.get("max_client_conn")),
        "clients_in_use": lists.get("used_clients", 0),
        "default_pool_size": _int(config.get("default_pool_size")),
        "pool_size": pool_size,
        "reserve_pool": reserve,
        "max_db_connections": _int(config.get("max_db_connections")),
        "max_user_connections": _int(config.get("max_user_connections")),
        "server_limit": server_limit,
    }


def server_connections(admin: Any, dbname: str, user: str) -> int:
    """The server connections the bouncer holds for ``dbname`` and ``user``."""
    for row in _show(admin, "POOLS"):
        if row["database"] == dbname and row["user"] == user:
            return sum(_int(row.get(k)) for k in SERVER_COLUMNS)
    return 0


def pool_size(admin: Any, dbname: str) -> int:
    """The database's pool size as the bouncer applies it now."""
    for row in _show(admin, "DATABASES"):
        if row["name"] == dbname:
            return _int(row.get("pool_size"))
    return 0


def set_default_pool_size(admin: Any, size: int, dbname: str) -> None:
    """``SET default_pool_size = size`` on the console, then ``RECONNECT``
    of ``dbname``: the new size applies at once to databases without a
    ``pool_size`` of their own, but server connections beyond it would
    linger while busy; reconnecting closes each as it is released, so the
    next run has the new size."""
    admin.execute(f"SET default_pool_size = {int(size)}")
    admin.execute(f'RECONNECT "{dbname}"')
