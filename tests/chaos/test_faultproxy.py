"""The fault proxy of ``tests/_support/faultproxy.py``, against the real
PostgreSQL (psycopg) and MariaDB (PyMySQL): each fault does what it says, the
network comes back, and the proxy leaves no thread behind.

No assertion here is about speed: a fault that should stop a query is shown
by the query's own timeout expiring, and a fault that should not is shown by
the query's answer.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from _support.databases import mysql_params
from _support.faultproxy import FaultProxy, proxies, target_of

pytestmark = pytest.mark.timeout(60)

#: Time the client gives a silent network before it gives up; short, since
#: every such wait is expected to expire.
SILENCE = 0.5


# ------------------------------------------------------------------ the two clients


class Client:
    """What the tests need of a driver: connect through the proxy and run
    ``SELECT 1`` within a time bound, and tell its errors apart."""

    name: str

    def connect(self, proxy: FaultProxy, timeout: float = 10.0) -> Any:
        raise NotImplementedError

    def query(self, conn: Any, timeout: float = 10.0) -> Any:
        """The answer to ``SELECT 1``; raises :class:`TimeoutError` when none
        came within ``timeout``, the driver's error when the connection broke."""
        raise NotImplementedError

    def is_timeout(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def is_refused(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def is_connection_error(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def close(self, conn: Any) -> None:
        with contextlib.suppress(Exception):  # one broken on purpose may fail to close
            conn.close()


class Postgres(Client):
    name = "postgresql"

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.psycopg = psycopg
        self.dsn = dsn

    def connect(self, proxy: FaultProxy, timeout: float = 10.0) -> Any:
        # libpq's connect_timeout counts whole seconds, at least 2.
        return self.psycopg.connect(
            proxy.dsn(self.dsn), autocommit=True, connect_timeout=max(2, math.ceil(timeout))
        )

    def query(self, conn: Any, timeout: float = 10.0) -> Any:
        # Through libpq's asynchronous interface, so that a silent network
        # makes the wait expire instead of blocking.
        pgconn = conn.pgconn
        deadline = time.monotonic() + timeout
        pgconn.send_query(b"SELECT 1")
        while pgconn.flush():
            _wait_for(pgconn.socket, deadline, write=True)
        while True:
            pgconn.consume_input()
            if not pgconn.is_busy():
                break
            _wait_for(pgconn.socket, deadline)
        value = None
        while (result := pgconn.get_result()) is not None:
            if result.status != self.psycopg.pq.ExecStatus.TUPLES_OK:
                raise self.psycopg.OperationalError(result.error_message.decode())
            value = int(result.get_value(0, 0))
        return value

    def is_timeout(self, exc: BaseException) -> bool:
        return isinstance(exc, TimeoutError) or (
            isinstance(exc, self.psycopg.OperationalError) and "timeout" in str(exc)
        )

    def is_refused(self, exc: BaseException) -> bool:
        return isinstance(exc, self.psycopg.OperationalError) and "refused" in str(exc)

    def is_connection_error(self, exc: BaseException) -> bool:
        text = str(exc).lower()
        return isinstance(exc, self.psycopg.OperationalError) and any(
            words in text
            for words in ("closed the connection", "connection reset", "broken pipe", "eof")
        )


class MariaDB(Client):
    name = "mariadb"
    #: CR_CONN_HOST_ERROR, CR_SERVER_GONE_ERROR, CR_SERVER_LOST
    LOST = frozenset({2003, 2006, 2013})

    def __init__(self, params: dict[str, Any]) -> None:
        import pymysql

        self.pymysql = pymysql
        self.params = params

    def connect(self, proxy: FaultProxy, timeout: float = 10.0) -> Any:
        # PyMySQL waits for the server's greeting with read_timeout, not
        # connect_timeout.
        return self.pymysql.connect(
            **{**self.params, "host": proxy.host, "port": proxy.port},
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
            autocommit=True,
        )

    def query(self, conn: Any, timeout: float = 10.0) -> Any:
        conn._read_timeout = timeout  # PyMySQL sets it on the socket for each read
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone()[0]

    def _code(self, exc: BaseException) -> int | None:
        if isinstance(exc, self.pymysql.err.OperationalError) and exc.args:
            code = exc.args[0]
            return code if isinstance(code, int) else None
        return None

    def is_timeout(self, exc: BaseException) -> bool:
        return self._code(exc) in self.LOST and "timed out" in str(exc)

    def is_refused(self, exc: BaseException) -> bool:
        return self._code(exc) == 2003 and "refused" in str(exc)

    def is_connection_error(self, exc: BaseException) -> bool:
        return self._code(exc) in self.LOST and "timed out" not in str(exc)


def _wait_for(sock: int, deadline: float, *, write: bool = False) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("no answer in time")
    ready = (
        select.select([], [sock], [], remaining)
        if write
        else select.select([sock], [], [], remaining)
    )
    if not any(ready):
        raise TimeoutError("no answer in time")


@pytest.fixture(params=["postgresql", "mariadb"])
def client(request: pytest.FixtureRequest) -> Client:
    if request.param == "postgresql":
        pytest.importorskip("psycopg")
        return Postgres(request.getfixturevalue("dsn"))
    return MariaDB(mysql_params())


@pytest.fixture
def proxy(client: Client, fault_proxy: Callable[..., FaultProxy]) -> FaultProxy:
    if isinstance(client, Postgres):
        return fault_proxy(client.dsn)
    return fault_proxy((client.params["host"], client.params["port"]))


@pytest.fixture
def connections(client: Client) -> Iterator[list[Any]]:
    """Connections a test opened; closed at its end."""
    opened: list[Any] = []
    yield opened
    for conn in opened:
        client.close(conn)


def _is_reset(address: tuple[str, int]) -> bool:
    """Connects to ``address`` and reads until the end: True if the
    connection was reset (on connect or on a read), False if it was closed in
    order."""
    try:
        with socket.create_connection(address, timeout=10) as sock:
            sock.settimeout(10)
            while sock.recv(65536):
                pass
    except ConnectionResetError:
        return True
    return False


def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(0.01)
    return True


# ------------------------------------------------------------------ each fault


@pytest.mark.db
def test_pass_forwards_and_counts(
    client: Client, proxy: FaultProxy, connections: list[Any]
) -> None:
    conn = client.connect(proxy)
    connections.append(conn)
    assert client.query(conn) == 1
    assert (proxy.accepted, proxy.forwarded, proxy.open_connections) == (1, 1, 1)
    assert proxy.mode == "forward"
    client.close(conn)
    assert eventually(lambda: proxy.open_connections == 0), "a closed connection is let go"


@pytest.mark.db
def test_large_answers_pass_intact(dsn: str, fault_proxy: Callable[..., FaultProxy]) -> None:
    """More than the proxy buffers in one direction (back pressure), byte for byte."""
    psycopg = pytest.importorskip("psycopg")
    proxy = fault_proxy(dsn)
    with psycopg.connect(proxy.dsn(dsn), autocommit=True) as conn:
        size = 5_000_000
        row = conn.execute(
            "SELECT repeat('x', %s) || md5(repeat('x', %s))", (size, size)
        ).fetchone()
        assert row is not None
        text = row[0]
        assert len(text) == size + 32 and text[:size] == "x" * size
        sent = conn.execute("SELECT length(%s::text)", ("y" * size,)).fetchone()
        assert sent == (size,)


@pytest.mark.db
def test_blackhole_new(client: Client, proxy: FaultProxy, connections: list[Any]) -> None:
    before = client.connect(proxy)
    connections.append(before)
    proxy.blackhole_new()
    assert proxy.mode == "hold"
    with pytest.raises(Exception) as info:
        connections.append(client.connect(proxy, timeout=SILENCE))
    assert client.is_timeout(info.value), repr(info.value)
    assert proxy.held == 1 and proxy.forwarded == 1
    assert client.query(before) == 1, "connections made before go on"

    proxy.passthrough()
    after = client.connect(proxy)
    connections.append(after)
    assert client.query(after) == 1


@pytest.mark.db
def test_blackhole_existing(client: Client, proxy: FaultProxy, connections: list[Any]) -> None:
    conn = client.connect(proxy)
    connections.append(conn)
    assert client.query(conn) == 1
    proxy.blackhole_existing()
    assert proxy.mode == "forward"
    with pytest.raises(Exception) as info:
        client.query(conn, timeout=SILENCE)
    assert client.is_timeout(info.value), repr(info.value)
    assert proxy.open_connections == 1, "the stalled connection stays open"

    other = client.connect(proxy)
    connections.append(other)
    assert client.query(other) == 1, "new connections are still forwarded"

    proxy.passthrough()
    fresh = client.connect(proxy)
    connections.append(fresh)
    assert client.query(fresh) == 1


@pytest.mark.db
def test_blackhole_then_the_network_heals(
    client: Client, proxy: FaultProxy, connections: list[Any]
) -> None:
    """A query sent into the cut is answered once the network is back:
    nothing sent meanwhile is lost, as with a real partition that heals."""
    conn = client.connect(proxy)
    connections.append(conn)
    proxy.blackhole()
    outcome: list[Any] = []

    def ask() -> None:
        try:
            outcome.append(client.query(conn, timeout=30.0))
        except BaseException as exc:
            outcome.append(exc)

    asker = threading.Thread(target=ask)
    asker.start()
    asker.join(SILENCE)
    assert asker.is_alive() and not outcome, "no answer through the cut"
    proxy.passthrough()
    asker.join(30.0)
    assert outcome == [1]


@pytest.mark.db
def test_blackhole_cuts_everything(
    client: Client, proxy: FaultProxy, connections: list[Any]
) -> None:
    conn = client.connect(proxy)
    connections.append(conn)
    proxy.blackhole()
    with pytest.raises(Exception) as info:
        connections.append(client.connect(proxy, timeout=SILENCE))
    assert client.is_timeout(info.value), repr(info.value)
    with pytest.raises(Exception) as info:
        client.query(conn, timeout=SILENCE)
    assert client.is_timeout(info.value), repr(info.value)

    proxy.passthrough()
    after = client.connect(proxy)
    connections.append(after)
    assert client.query(after) == 1
    assert proxy.held == 1, "the connect made into the cut stays unanswered"


@pytest.mark.db
def test_refuse(client: Client, proxy: FaultProxy, connections: list[Any]) -> None:
    conn = client.connect(proxy)
    connections.append(conn)
    port = proxy.port
    proxy.refuse()
    assert proxy.mode == "refuse"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=10).close()
    with pytest.raises(Exception) as info:
        connections.append(client.connect(proxy, timeout=10.0))
    assert client.is_refused(info.value), repr(info.value)
    assert client.query(conn) == 1, "connections made before go on"
    assert proxy.accepted == 1

    proxy.passthrough()
    assert proxy.port == port, "the proxy listens again on the same port"
    after = client.connect(proxy)
    connections.append(after)
    assert client.query(after) == 1


@pytest.mark.db
def test_reset_new(client: Client, proxy: FaultProxy, connections: list[Any]) -> None:
    proxy.reset_new()
    assert proxy.mode == "reset"
    with pytest.raises(Exception) as info:
        connections.append(client.connect(proxy))
    assert client.is_connection_error(info.value), repr(info.value)
    assert proxy.reset == 1 and proxy.forwarded == 0 and proxy.open_connections == 0
    assert _is_reset(proxy.address), "a reset, not an orderly close"
    assert proxy.reset == 2

    proxy.passthrough()
    after = client.connect(proxy)
    connections.append(after)
    assert client.query(after) == 1


@pytest.mark.db
def test_reset_all(client: Client, proxy: FaultProxy, connections: list[Any]) -> None:
    first, second = client.connect(proxy), client.connect(proxy)
    connections += [first, second]
    raw = socket.create_connection(proxy.address, timeout=10)
    connections.append(raw)
    assert eventually(lambda: proxy.forwarded == 3)
    proxy.reset_all()
    assert proxy.reset == 3 and proxy.open_connections == 0
    raw.settimeout(10)
    with pytest.raises(ConnectionResetError):  # a reset, not an orderly close
        while raw.recv(65536):  # MariaDB greets first
            pass
    for conn in (first, second):
        with pytest.raises(Exception) as info:
            client.query(conn)
        assert client.is_connection_error(info.value), repr(info.value)
    after = client.connect(proxy)  # new connections were never stopped
    connections.append(after)
    assert client.query(after) == 1


def test_a_target_that_refuses_resets_the_client(fault_proxy: Callable[..., FaultProxy]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    proxy = fault_proxy(("127.0.0.1", dead))
    assert _is_reset(proxy.address), "a reset, not an orderly close"
    assert eventually(lambda: proxy.refused_upstream == 1)
    assert proxy.open_connections == 0 and proxy.forwarded == 0


# ------------------------------------------------------------------ addresses


def test_dsn_through_the_proxy(fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(("127.0.0.1", 5432))
    here = f"127.0.0.1:{proxy.port}"
    assert proxy.dsn("postgresql://app:pw@db.example:6432/app?sslmode=disable") == (
        f"postgresql://app:pw@{here}/app?sslmode=disable"
    )
    assert proxy.dsn("postgresql:///app") == f"postgresql://{here}/app"
    assert proxy.dsn("host=db hostaddr=10.0.0.1 port=6432 dbname=app password='a b'") == (
        f"dbname=app password='a b' host=127.0.0.1 port={proxy.port}"
    )
    assert target_of("postgresql://u@db.example:6432/x") == ("db.example", 6432)
    assert target_of("mysql://root@127.0.0.1/test") == ("127.0.0.1", 3306)
    assert target_of("host=db port=6000 dbname=x") == ("db", 6000)
    assert target_of("dbname=x") == ("127.0.0.1", 5432)
    with pytest.raises(ValueError, match="Unix socket"):
        target_of("host=/var/run/postgresql dbname=x")


# ------------------------------------------------------------------ clean close


def _sockets() -> int:
    """Sockets this process has open (0 where /proc cannot tell)."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    count = 0
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile (the listing's own)
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def _proxy_threads() -> int:
    return sum(t.name.startswith("faultproxy-") for t in threading.enumerate())


# Threads and sockets left by earlier tests may end meanwhile, never start:
# the counts after must not exceed those before.


@pytest.mark.db
def test_close_leaves_no_thread_and_no_socket(client: Client) -> None:
    target = (
        target_of(client.dsn)
        if isinstance(client, Postgres)
        else (client.params["host"], client.params["port"])
    )
    with FaultProxy(target) as warm_up:  # whatever a driver opens once per process
        client.close(client.connect(warm_up))
    threads, sockets = threading.active_count(), _sockets()
    assert _proxy_threads() == 0
    clients: list[Any] = []
    try:
        for _ in range(3):
            with FaultProxy(target) as proxy:
                assert _proxy_threads() == 1, "one thread per proxy"
                clients += [client.connect(proxy), client.connect(proxy)]
                proxy.blackhole()  # two connections stalled, and a connect held
                clients.append(socket.create_connection(proxy.address, timeout=10))
                proxy.passthrough()
                assert eventually(lambda p=proxy: p.open_connections == 3)  # type: ignore[misc]
            proxy.close()  # idempotent
            assert _proxy_threads() == 0
            with pytest.raises(RuntimeError, match="closed"):
                proxy.blackhole()
            held = clients[-1]
            held.settimeout(10)
            assert held.recv(1) == b"", "closing the proxy closes its connections"
    finally:
        for conn in clients:
            client.close(conn)
    assert threading.active_count() <= threads
    assert _sockets() <= sockets, "every socket of the proxies is closed"


def test_the_fixture_closes_what_it_made() -> None:
    """What the ``fault_proxy`` fixture runs: every proxy made is closed on
    exit, thread and all."""
    before = threading.active_count()
    with proxies() as make:
        made = [make(("127.0.0.1", 9)) for _ in range(3)]
        assert _proxy_threads() == 3
    assert _proxy_threads() == 0 and threading.active_count() <= before
    for proxy in made:
        with pytest.raises(RuntimeError, match="closed"):
            proxy.refuse()
