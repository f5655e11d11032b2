"""A private PgBouncer for tests and benchmarks.

:class:`PgBouncer` writes a configuration and a user list into a temporary
directory, starts ``pgbouncer`` on a free 127.0.0.1 port in front of a
PostgreSQL, and stops it (also when a test fails: use it as a context manager
or call :meth:`PgBouncer.stop`). PgBouncer refuses to run as root; run as
root, it is started with ``-u postgres`` and its files are made readable by
that user.

Each instance serves two databases, both the upstream's database:

- the upstream database's own name (``test``), with ``default_pool_size``
  server connections;
- ``<name>_one``, the same database with ``pool_size=1``, so that every
  client shares one server connection.

``server_login_retry`` is 1 second (PgBouncer's default is 15): after a
failed server login, such as one refused while a database is killed on the
admin console, PgBouncer waits that long before it connects again, and the
tests need not wait 15 seconds. ``admin_users`` is the upstream user, so
:meth:`PgBouncer.admin` opens its admin console (database ``pgbouncer``),
which speaks only the simple query protocol: :meth:`PgBouncer.show` and
:meth:`PgBouncer.command` use psycopg's ``ClientCursor``, which sends it.

:func:`binary` finds the program, or skips the test with the reason (a
failure when ``PYPOOL_REQUIRE_DB=1``, as for the database servers).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

#: Seconds PgBouncer may take to accept connections after it starts.
START_TIMEOUT = 20.0
#: Seconds it may take to exit once asked.
STOP_TIMEOUT = 10.0
#: Where Debian puts it when ``/usr/sbin`` is not on ``PATH``.
_DEBIAN_PATH = "/usr/sbin/pgbouncer"
#: The system user PgBouncer runs as when started by root.
RUN_AS = "postgres"


_running: set[PgBouncer] = set()


@atexit.register
def _stop_all() -> None:
    """Stops what a crashed test run left running."""
    for bouncer in list(_running):
        bouncer.stop()


def find_binary() -> str | None:
    """The ``pgbouncer`` program, or None."""
    return shutil.which("pgbouncer") or (_DEBIAN_PATH if os.access(_DEBIAN_PATH, os.X_OK) else None)


def binary() -> str:
    """The ``pgbouncer`` program; skips the calling test when it is missing,
    or fails it when ``PYPOOL_REQUIRE_DB=1``."""
    import pytest

    path = find_binary()
    if path is None:
        reason = "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
        if os.environ.get("PYPOOL_REQUIRE_DB") == "1":
            pytest.fail(f"PYPOOL_REQUIRE_DB=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return path


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 (for a moment)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dsn(user: str, port: int, dbname: str) -> str:
    return f"postgresql://{user}@127.0.0.1:{port}/{dbname}"


class PgBouncer:
    """One private PgBouncer process in front of ``upstream`` (a PostgreSQL
    URL with trust authentication, such as the tests' ``dsn``).

    ``pool_mode`` is ``"transaction"`` or ``"session"``; ``settings`` adds or
    overrides ``[pgbouncer]`` settings (``server_lifetime``,
    ``client_idle_timeout``, ...).
    """

    def __init__(
        self,
        upstream: str,
        *,
        pool_mode: str = "transaction",
        default_pool_size: int = 2,
        settings: Mapping[str, object] | None = None,
        program: str | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        self.user = parts.username or "postgres"
        self.dbname = (parts.path or "/test").lstrip("/") or "test"
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 5432
        self.target_port = self.upstream_port
        self.upstream = upstream
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.settings = dict(settings or {})
        self.program = program or find_binary() or "pgbouncer"
        self.port = 0
        self.dir = ""
        self.process: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ addresses

    @property
    def dsn(self) -> str:
        """The upstream database, through the bouncer."""
        return _dsn(self.user, self.port, self.dbname)

    @property
    def dsn_one(self) -> str:
        """The upstream database through a bouncer pool of one server connection."""
        return _dsn(self.user, self.port, f"{self.dbname}_one")

    @property
    def admin_dsn(self) -> str:
        """The admin console."""
        return _dsn(self.user, self.port, "pgbouncer")

    def log(self) -> str:
        """What PgBouncer logged so far."""
        try:
            with open(os.path.join(self.dir, "pgbouncer.log"), encoding="utf-8") as f:
                return f.read()
        except OSError:
            return ""

    # ------------------------------------------------------------ lifecycle

    def _write_files(self) -> str:
        self.dir = tempfile.mkdtemp(prefix="pypool-pgbouncer-")
        userlist = os.path.join(self.dir, "userlist.txt")
        with open(userlist, "w", encoding="utf-8") as f:
            f.write(f'"{self.user}" ""\n')
        ini = self._write_ini()
        if os.geteuid() == 0:
            entry = pwd.getpwnam(RUN_AS)
            for path in (self.dir, ini, userlist):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(self.dir, 0o755)
        return ini

    def _write_ini(self) -> str:
        ini = os.path.join(self.dir, "pgbouncer.ini")
        config: dict[str, object] = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": os.path.join(self.dir, "userlist.txt"),
            "admin_users": self.user,
            "pool_mode": self.pool_mode,
            "default_pool_size": self.default_pool_size,
            "min_pool_size": 0,
            "reserve_pool_size": 0,
            "max_client_conn": 200,
            "server_login_retry": 1,
            "logfile": os.path.join(self.dir, "pgbouncer.log"),
            "pidfile": os.path.join(self.dir, "pgbouncer.pid"),
            "ignore_startup_parameters": "extra_float_digits",
            **self.settings,
        }
        host = f"host={self.upstream_host}"
        lines = [
            "[databases]",
            f"{self.dbname} = {host} port={self.target_port} dbname={self.dbname}",
            f"{self.dbname}_one = {host} port={self.upstream_port} dbname={self.dbname} "
            "pool_size=1",
            "[pgbouncer]",
            *(f"{key} = {value}" for key, value in config.items()),
        ]
        with open(ini, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        return ini

    def start(self) -> PgBouncer:
        """Starts PgBouncer (on a new free port the first time, on the same
        port after :meth:`stop`) and waits until its admin console answers."""
        if self.process is not None:
            raise RuntimeError("this PgBouncer is running already")
        if not self.port:
            self.port = free_port()
            ini = self._write_files()
        else:
            ini = os.path.join(self.dir, "pgbouncer.ini")
        command = [self.program, ini]
        if os.geteuid() == 0:
            command[1:1] = ["-u", RUN_AS]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _running.add(self)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"pgbouncer exited with {code} at start:\n{self.log()}")
            try:
                with self.admin() as conn:
                    conn.execute("SHOW VERSION")
                return self
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"pgbouncer did not answer within {START_TIMEOUT} s:\n{self.log()}"
                    ) from None
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stops PgBouncer (``SIGTERM``: at once, dropping every connection,
        as a crash or a restart does to its clients). Idempotent."""
        process, self.process = self.process, None
        _running.discard(self)
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        """Stops and starts it again on the same port."""
        self.stop()
        self.start()

    def point_at(self, port: int) -> None:
        """Points the main database at another upstream port and reloads
        (port 1: an upstream that refuses every connect; the upstream's own
        port to undo it)."""
        self.target_port = port
        self._write_ini()
        self.command("RELOAD")

    def cleanup(self) -> None:
        """Stops it and removes its files."""
        self.stop()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    # ---------------------------------------------------------- admin console

    @contextlib.contextmanager
    def admin(self) -> Iterator[Any]:
        """A connection to the admin console (simple query protocol)."""
        import psycopg

        conn = psycopg.connect(
            self.admin_dsn,
            autocommit=True,
            connect_timeout=3,
            cursor_factory=psycopg.ClientCursor,
        )
        try:
            yield conn
        finally:
            conn.close()

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console, as a list of dicts."""
        with self.admin() as conn:
            cur = conn.execute(f"SHOW {what}")
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def command(self, sql: str) -> None:
        """One admin command (``KILL test``, ``RESUME test``, ``SET ...``)."""
        with self.admin() as conn:
            conn.execute(sql)

    def pool(self, database: str | None = None) -> dict[str, Any]:
        """The ``SHOW POOLS`` row of ``database`` (default: the main one), or
        an empty dict when it has no pool yet."""
        name = database or self.dbname
        for row in self.show("POOLS"):
            if row["database"] == name and row["user"] == self.user:
                return row
        return {}

    def server_connections(self, database: str | None = None) -> int:
        """Server connections the bouncer holds for ``database``."""
        row = self.pool(database)
        return sum(
            int(row.get(k, 0)) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
        )
