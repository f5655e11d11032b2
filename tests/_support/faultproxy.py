"""A TCP proxy on 127.0.0.1 that a test can cut, in front of PostgreSQL or MariaDB.

The network faults a pool must survive, made on demand and without touching the
shared servers::

    with FaultProxy.in_front_of(dsn) as proxy:
        conn = psycopg.connect(proxy.dsn(dsn))   # through the proxy
        proxy.blackhole()                        # the network goes silent
        ...
        proxy.passthrough()                      # and comes back

or, in a test, through the ``fault_proxy`` fixture (registered by the suite's
``conftest.py``), which closes every proxy it made at the end of the test::

    def test_something(fault_proxy, dsn):
        proxy = fault_proxy(dsn)

One thread runs the proxy (a selector loop); every method below may be called
from any thread at any time, and has taken effect when it returns. What happens
to a connection depends on what the proxy was told when the connection was
accepted (``new``) and, for a connection already forwarded, on what it was told
since (``existing``):

========================  =====================================================
method                    effect
========================  =====================================================
``passthrough()``         new connections are forwarded to the target, and the
                          connections stalled by a black hole resume (as a
                          network that heals: nothing sent meanwhile is lost).
                          Connections held unanswered stay so.
``blackhole_new()``       new connections are accepted and never answered nor
                          forwarded (what a client sees when the server's host
                          or a middlebox accepts and then stops); existing ones
                          go on.
``blackhole_existing()``  every connection open now stops forwarding both
                          ways; its sockets stay open, so neither side notices
                          anything but silence. New ones are still forwarded.
``blackhole()``           both: the network is cut for everything.
``refuse()``              the listening socket is closed: a connect gets
                          ``ECONNREFUSED`` at once. Existing connections go on.
                          ``passthrough()`` listens again, on the same port.
``reset_new()``           new connections are accepted and reset at once (RST).
``reset_all()``           every connection open now is reset, both sides (RST);
                          what new connections get does not change.
========================  =====================================================

A connection the target refuses is reset. The counters (:attr:`accepted`,
:attr:`forwarded`, :attr:`held`, :attr:`refused_upstream`, :attr:`reset`,
:attr:`open_connections`) say what happened. :meth:`close` closes every socket
and ends the thread; it raises if the loop met an unexpected error, so a fault
in the harness never passes for a fault in the pool.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import re
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

__all__ = ["FaultProxy", "fault_proxy", "proxies", "target_of"]

#: How much one direction of a connection buffers before the proxy stops
#: reading from the sender (back pressure).
_BUFFER_LIMIT = 1 << 20
_CHUNK = 65536
#: How long a caller waits for the loop to carry out a command.
_COMMAND_TIMEOUT = 10.0
_DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mariadb": 3306}

# What a new connection gets.
_FORWARD = "forward"
_HOLD = "hold"
_RESET = "reset"
_REFUSE = "refuse"


def target_of(dsn: str) -> tuple[str, int]:
    """``(host, port)`` of a PostgreSQL or MySQL DSN, as a URL
    (``postgresql://u@h:5432/db``, ``mysql://...``) or as libpq key=value
    words (``host=h port=5432``). Only TCP addresses can be proxied."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.split("+")[0], 5432)
    else:
        words = _kv_words(dsn)
        host = words.get("hostaddr") or words.get("host") or "127.0.0.1"
        port = int(words.get("port") or 5432)
    if host.startswith("/"):
        raise ValueError(f"a Unix socket ({host}) cannot be proxied: give a TCP host")
    return host, port


_KV_WORD = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def _kv_words(dsn: str) -> dict[str, str]:
    return {
        key: value[1:-1].replace("\\'", "'").replace("\\\\", "\\")
        if value.startswith("'")
        else value
        for key, value in _KV_WORD.findall(dsn)
    }


class _Link:
    """One client connection and, once forwarded, its upstream connection."""

    __slots__ = (
        "client",
        "client_eof",
        "client_shut",
        "stalled",
        "state",
        "to_client",
        "to_upstream",
        "upstream",
        "upstream_eof",
        "upstream_shut",
    )

    def __init__(self, client: socket.socket, state: str) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.state = state  # "connecting", "open", "held"
        self.stalled = False
        self.to_client = bytearray()
        self.to_upstream = bytearray()
        self.client_eof = self.upstream_eof = False
        self.client_shut = self.upstream_shut = False


class FaultProxy:
    """A TCP proxy from 127.0.0.1:<free port> to ``target``, with faults on
    demand (see the module docstring). Starts at once, forwarding."""

    def __init__(self, target: tuple[str, int], *, host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self._new = _FORWARD
        self._links: dict[socket.socket, _Link] = {}
        self._masks: dict[socket.socket, int] = {}
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], list[Any], threading.Event]]
        self._commands = queue.SimpleQueue()
        self._errors: list[BaseException] = []
        self._stopping = False
        self.accepted = 0  # connections accepted, whatever became of them
        self.forwarded = 0  # connections that reached the target
        self.held = 0  # connections accepted and never answered
        self.reset = 0  # connections reset on accept or by reset_all()
        self.refused_upstream = 0  # connections the target refused
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._listener: socket.socket | None = None
        self.port = 0
        self._listen()
        self._thread = threading.Thread(
            target=self._run, name=f"faultproxy-{self.port}", daemon=True
        )
        self._thread.start()

    @classmethod
    def in_front_of(cls, dsn: str) -> FaultProxy:
        """A proxy to the server a DSN names."""
        return cls(target_of(dsn))

    # ------------------------------------------------------------ addresses

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def dsn(self, dsn: str) -> str:
        """``dsn`` with its host and port replaced by the proxy's (a URL stays
        a URL; in key=value words ``hostaddr`` is dropped)."""
        if "://" in dsn:
            parts = urlsplit(dsn)
            userinfo, _, _ = parts.netloc.rpartition("@")
            netloc = f"{userinfo}@" if userinfo else ""
            netloc += f"{self.host}:{self.port}"
            return urlunsplit(parts._replace(netloc=netloc))
        kept = [
            match.group(0)
            for match in _KV_WORD.finditer(dsn)
            if match.group(1) not in ("host", "hostaddr", "port")
        ]
        return " ".join([*kept, f"host={self.host}", f"port={self.port}"])

    # ---------------------------------------------------------------- modes

    def passthrough(self) -> None:
        """Forwards new connections, and resumes the stalled ones."""

        def apply() -> None:
            self._new = _FORWARD
            self._listen()
            for link in self._each_link():
                if link.stalled:
                    link.stalled = False
                    self._update(link)

        self._call(apply)

    def blackhole_new(self) -> None:
        """Accepts new connections and never answers them."""
        self._call(lambda: self._set_new(_HOLD))

    def blackhole_existing(self) -> None:
        """Stops forwarding, both ways, on every connection open now."""
        self._call(self._stall_all)

    def blackhole(self) -> None:
        """Cuts everything: existing connections stall, new ones are held."""

        def apply() -> None:
            self._set_new(_HOLD)
            self._stall_all()

        self._call(apply)

    def refuse(self) -> None:
        """Closes the listening socket: connects are refused."""

        def apply() -> None:
            self._new = _REFUSE
            if self._listener is not None:
                self._unwatch(self._listener)
                self._listener.close()
                self._listener = None

        self._call(apply)

    def reset_new(self) -> None:
        """Accepts new connections and resets them at once."""
        self._call(lambda: self._set_new(_RESET))

    def reset_all(self) -> None:
        """Resets every connection open now, on both sides."""

        def apply() -> None:
            for link in self._each_link():
                self.reset += 1
                self._drop(link, rst=True)

        self._call(apply)

    @property
    def mode(self) -> str:
        """What a new connection gets: ``"forward"``, ``"hold"``, ``"reset"``
        or ``"refuse"``."""
        return self._new

    @property
    def open_connections(self) -> int:
        """Client connections open now (forwarded, held or stalled)."""
        return len(self._each_link())

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Closes every socket and ends the proxy's thread. Idempotent.
        Raises if the proxy's loop failed."""
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                self._call(self._stop)
            self._thread.join(_COMMAND_TIMEOUT)
            if self._thread.is_alive():
                raise RuntimeError(f"fault proxy on port {self.port}: its thread did not end")
        if self._errors:
            error, self._errors = self._errors[0], []
            raise RuntimeError(f"fault proxy on port {self.port} failed: {error!r}") from error

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<FaultProxy {self.host}:{self.port} -> {self.target[0]}:{self.target[1]} "
            f"new={self._new} open={self.open_connections} accepted={self.accepted}>"
        )

    # --------------------------------------------------------- the commands

    def _call(self, fn: Callable[[], Any]) -> None:
        """Runs ``fn`` on the loop's thread and waits until it has run."""
        if not self._thread.is_alive():
            raise RuntimeError(f"fault proxy on port {self.port} is closed")
        outcome: list[Any] = []
        done = threading.Event()
        self._commands.put((fn, outcome, done))
        with contextlib.suppress(BlockingIOError):  # the wake-up byte is already there
            self._wake_w.send(b"\0")
        if not done.wait(_COMMAND_TIMEOUT):
            raise RuntimeError(f"fault proxy on port {self.port} did not answer")
        if outcome and isinstance(outcome[0], BaseException):
            raise outcome[0]

    def _each_link(self) -> list[_Link]:
        """Each link once (``_links`` maps both of its sockets to it)."""
        return list({id(link): link for link in list(self._links.values())}.values())

    def _set_new(self, what: str) -> None:
        self._new = what
        self._listen()

    def _stall_all(self) -> None:
        for link in self._each_link():
            if link.state != "held":
                link.stalled = True
                self._update(link)

    def _listen(self) -> None:
        """(Re)opens the listening socket, on the same port as before."""
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._watch(listener, selectors.EVENT_READ)

    def _stop(self) -> None:
        self._stopping = True
        for link in self._each_link():
            self._drop(link, rst=False)
        if self._listener is not None:
            self._unwatch(self._listener)
            self._listener.close()
            self._listener = None

    # ------------------------------------------------------------- the loop

    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, events in self._selector.select():
                    sock = key.fileobj
                    try:
                        self._dispatch(sock, events)  # type: ignore[arg-type]
                    except Exception as exc:  # a harness bug: keep it for close()
                        self._errors.append(exc)
                        link = self._links.get(sock)  # type: ignore[call-overload]
                        if link is not None:
                            self._drop(link, rst=True)
        except BaseException as exc:  # pragma: no cover - the loop itself broke
            self._errors.append(exc)
        finally:
            self._stopping = True
            for link in self._each_link():
                self._drop(link, rst=False)
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()
            # Whoever waits for a command that will not run now is told so.
            while True:
                try:
                    _fn, outcome, done = self._commands.get_nowait()
                except queue.Empty:
                    break
                outcome.append(RuntimeError(f"fault proxy on port {self.port} is closed"))
                done.set()

    def _dispatch(self, sock: socket.socket, events: int) -> None:
        if sock is self._wake_r:
            self._run_commands()
        elif sock is self._listener:
            self._accept()
        else:
            link = self._links.get(sock)
            if link is None:
                return  # dropped earlier in this round of events
            if link.state == "held":
                self._discard_input(link)
            elif link.state == "connecting":
                self._connected(link)
            else:
                self._pump(link, sock, events)

    def _run_commands(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                fn, outcome, done = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except Exception as exc:
                outcome.append(exc)
            finally:
                done.set()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            self.accepted += 1
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._new == _RESET:
                self.reset += 1  # counted first: the client may look as soon as it sees the reset
                _rst(client)
                continue
            if self._new == _HOLD:
                self.held += 1
                link = _Link(client, "held")
                self._links[client] = link
                self._update(link)
                continue
            link = _Link(client, "connecting")
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            upstream.setblocking(False)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link.upstream = upstream
            self._links[client] = link
            self._links[upstream] = link
            code = upstream.connect_ex(self.target)
            if code not in (0, errno.EINPROGRESS, errno.EAGAIN):
                self._drop(link, rst=True)
                self.refused_upstream += 1
                continue
            self._update(link)

    def _connected(self, link: _Link) -> None:
        assert link.upstream is not None
        code = link.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._drop(link, rst=True)
            self.refused_upstream += 1  # counted once done, for readers elsewhere
            return
        self.forwarded += 1
        link.state = "open"
        self._update(link)

    def _discard_input(self, link: _Link) -> None:
        """A held connection: read and drop what the client sends, and
        notice when it goes away."""
        try:
            data = link.client.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(link, rst=False)

    def _pump(self, link: _Link, sock: socket.socket, events: int) -> None:
        from_client = sock is link.client
        if events & selectors.EVENT_READ:
            try:
                data = sock.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:  # reset by this side: reset the other one too
                self._drop(link, rst=True)
                return
            if data == b"":
                if from_client:
                    link.client_eof = True
                else:
                    link.upstream_eof = True
            elif data:
                (link.to_upstream if from_client else link.to_client).extend(data)
        if not self._flush(link):
            return
        self._half_close(link)
        if link.client in self._links:
            self._update(link)

    def _flush(self, link: _Link) -> bool:
        """Sends what is buffered, as far as the sockets take it; False if the
        link was dropped."""
        pairs = ((link.upstream, link.to_upstream), (link.client, link.to_client))
        for sock, buffer in pairs:
            if sock is None or not buffer or link.stalled:
                continue
            try:
                sent = sock.send(buffer)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                self._drop(link, rst=True)
                return False
            del buffer[:sent]
        return True

    def _half_close(self, link: _Link) -> None:
        """Passes an end of stream on once everything before it is sent; the
        link ends when both directions have."""
        if link.client_eof and not link.to_upstream and not link.upstream_shut:
            link.upstream_shut = True
            with contextlib.suppress(OSError):
                assert link.upstream is not None
                link.upstream.shutdown(socket.SHUT_WR)
        if link.upstream_eof and not link.to_client and not link.client_shut:
            link.client_shut = True
            with contextlib.suppress(OSError):
                link.client.shutdown(socket.SHUT_WR)
        if link.client_shut and link.upstream_shut:
            self._drop(link, rst=False)

    # ------------------------------------------------------------ selection

    def _update(self, link: _Link) -> None:
        """Watches each socket of ``link`` for what it can do now."""
        read, write = selectors.EVENT_READ, selectors.EVENT_WRITE
        if link.state == "held":
            self._watch(link.client, read)
            return
        assert link.upstream is not None
        if link.state == "connecting":
            self._watch(link.client, 0)
            self._watch(link.upstream, write)
            return
        if link.stalled:
            self._watch(link.client, 0)
            self._watch(link.upstream, 0)
            return
        client = upstream = 0
        if not link.client_eof and len(link.to_upstream) < _BUFFER_LIMIT:
            client |= read
        if link.to_client:
            client |= write
        if not link.upstream_eof and len(link.to_client) < _BUFFER_LIMIT:
            upstream |= read
        if link.to_upstream:
            upstream |= write
        self._watch(link.client, client)
        self._watch(link.upstream, upstream)

    def _watch(self, sock: socket.socket, mask: int) -> None:
        current = self._masks.get(sock, 0)
        if mask == current:
            return
        if not mask:
            self._unwatch(sock)
        elif current:
            self._selector.modify(sock, mask)
            self._masks[sock] = mask
        else:
            self._selector.register(sock, mask)
            self._masks[sock] = mask

    def _unwatch(self, sock: socket.socket) -> None:
        if self._masks.pop(sock, 0):
            self._selector.unregister(sock)

    def _drop(self, link: _Link, *, rst: bool) -> None:
        """Closes both sides of ``link``; with ``rst``, with a reset."""
        for sock in (link.client, link.upstream):
            if sock is None:
                continue
            self._links.pop(sock, None)
            self._unwatch(sock)
            if rst:
                _rst(sock)
            else:
                sock.close()


def _rst(sock: socket.socket) -> None:
    """Closes ``sock`` with a reset (SO_LINGER 0) rather than a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@contextlib.contextmanager
def proxies() -> Iterator[Callable[[str | tuple[str, int]], FaultProxy]]:
    """``with proxies() as make:``, then ``make(dsn_or_address)``: a started
    :class:`FaultProxy` in front of the server a DSN names (or of a
    ``(host, port)``). Every proxy made is closed on exit."""
    made: list[FaultProxy] = []

    def make(target: str | tuple[str, int]) -> FaultProxy:
        proxy = FaultProxy(target_of(target) if isinstance(target, str) else target)
        made.append(proxy)
        return proxy

    try:
        yield make
    finally:
        errors = []
        for proxy in made:
            try:
                proxy.close()
            except RuntimeError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[str | tuple[str, int]], FaultProxy]]:
    """``fault_proxy(dsn_or_address)``: a started :class:`FaultProxy` (see
    :func:`proxies`), closed at the end of the test."""
    with proxies() as make:
        yield make
