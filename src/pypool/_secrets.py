"""Passwords kept out of what pypool logs, raises and shows.

:func:`mask_dsn` masks the passwords a text shows with their key (URLs,
key=value DSNs, query strings, dict reprs); :class:`Secrets` knows the
passwords of one connect call and masks every piece of them, wherever a
driver repeats one (messages, ``args``, chained causes). The policy layer
and every adapter use them; :mod:`pypool.dbapi` re-exports both.
"""

from __future__ import annotations

import contextlib
import functools
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["Secrets", "mask_dsn", "masked_repr"]

_SECRET_KEY = r"(?:[\w.-]*password|passwd|pwd|[\w.-]*passphrase|[\w.-]*secret)"
# scheme://user:password@host -> scheme://user:***@host (up to the last "@" of
# the run: a password with an unescaped "@" is masked whole; masking too much
# is harmless, too little is not). A password with a space in it (which libpq
# rejects) is masked up to the last "@" before the next "/".
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@?#]*:)(?:\S*|[^/\n]*)@")
_QUOTED = r"'(?:[^'\\]|\\.)*(?:'|$)|\"(?:[^\"\\]|\\.)*(?:\"|$)"
_UNQUOTED = r"(?:\\.|[^\s\\&;]|[&;](?![\w.-]+=))+"
# A word without "=" after an unquoted value: libpq would take it for a key
# without a value, so it is the rest of a password with an unquoted space.
_BARE = r"(?:\\.|[^\s\\&;=]|[&;](?![\w.-]+=))+?(?=['\"]?(?:\s|$)|[&;][\w.-]+=)"
# password=secret, password='a b', ?password=x&..., PWD=x;... and the bare
# words after an unquoted value (password=s3cr3t XYZ dbname=x)
_KV_PASSWORD = re.compile(
    r"(?i)(?<![\w.-])(" + _SECRET_KEY + r")(\s*=\s*)"
    r"(" + _QUOTED + "|" + _UNQUOTED + r")((?:[ \t]+" + _BARE + r")*)"
)
# What may follow bare words that belong to a password: another key=value
# word, a query string's next parameter, or the end of the line (a closing
# quote allowed). Anything else is prose, which keeps its words.
_DSN_GOES_ON = re.compile(r"[ \t]+[\w.-]+\s*=|[&;][\w.-]+=|['\"]?[ \t]*(?:\r?\n|$)")
# 'password': 'secret' (the repr of a dict)
_DICT_PASSWORD = re.compile(
    r"(?i)(['\"])(" + _SECRET_KEY + r")\1(\s*:\s*)b?"
    r"(?:'(?:[^'\\]|\\.)*(?:'|$)|\"(?:[^\"\\]|\\.)*(?:\"|$))"
)
_SECRET_KWARG = re.compile(r"(?i)pass|pwd|secret")


def _bare_words_are_password(match: re.Match[str]) -> bool:
    """Whether the bare words after an unquoted value are the rest of it."""
    value, words = match.group(3), match.group(4)
    if not words or value[0] in "'\"" or "'" in value or '"' in value:
        return False  # quoted, or quoted around: prose follows
    return _DSN_GOES_ON.match(match.string, match.end()) is not None


def _mask_kv(match: re.Match[str]) -> str:
    words = "" if _bare_words_are_password(match) else match.group(4)
    return f"{match.group(1)}{match.group(2)}***{words}"


def mask_dsn(text: str) -> str:
    """``text`` with every password in it replaced by ``***``.

    Masks the password of URLs (``postgresql://u:***@h/db``), of key=value
    DSNs and query strings (``password=***``, quoted values included, and
    ``sslpassword``, ``passwd``, ``pwd``), and of dict reprs
    (``'password': '***'``). A password with an unquoted space, which libpq
    rejects (``password=s3cr3t XYZ dbname=x``), is masked whole. Use it on any
    text that may hold a DSN before it is logged or put into an exception.

    It reads the text only: a driver's message that repeats part of a
    password without its key (libpq's ``missing "=" after "XYZ"``) needs the
    password itself, which :class:`Secrets` knows.
    """
    text = _URL_PASSWORD.sub(r"\1***@", text)
    text = _KV_PASSWORD.sub(_mask_kv, text)
    return _DICT_PASSWORD.sub(r"\1\2\1\3'***'", text)


# The password of a URL's user info, and of a URL's query string (up to the
# next parameter: libpq takes spaces there too).
_URL_USERINFO = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s/:@?#]*:(\S*|[^/\n]*)@")
_URL_QUERY = re.compile(r"(?i)[?&]" + _SECRET_KEY + r"=([^&#\n]*)")
_ESCAPE = re.compile(r"\\(.)")
# A word of a key=value DSN (a query string's "&key=" ends one too).
_WORD = re.compile(r"[ \t]+((?:[^\s&;]|[&;](?![\w.-]+=))+)")
#: libpq's connection keywords (libpq 18). In a DSN, the words after an
#: unquoted password up to the next of these are taken for the rest of it:
#: libpq rejects them, and repeats the first in its error.
# fmt: off
_LIBPQ_KEYWORDS: Final = frozenset({
    "application_name", "channel_binding", "client_encoding", "connect_timeout", "dbname",
    "fallback_application_name", "gssdelegation", "gssencmode", "gsslib", "host", "hostaddr",
    "keepalives", "keepalives_count", "keepalives_idle", "keepalives_interval", "krbsrvname",
    "load_balance_hosts", "max_protocol_version", "min_protocol_version", "oauth_client_id",
    "oauth_client_secret", "oauth_issuer", "oauth_scope", "options", "passfile", "password",
    "port", "replication", "require_auth", "requirepeer", "requiressl", "scram_client_key",
    "scram_server_key", "service", "ssl_max_protocol_version", "ssl_min_protocol_version",
    "sslcert", "sslcertmode", "sslcompression", "sslcrl", "sslcrldir", "sslkey",
    "sslkeylogfile", "sslmode", "sslnegotiation", "sslpassword", "sslrootcert", "sslsni",
    "target_session_attrs", "tcp_user_timeout", "user",
})
# fmt: on
#: Pieces shorter than this are masked only where they stand alone (not
#: inside a longer word), so that a short piece does not garble a message.
_SHORT = 4
#: The exception attributes besides ``args`` that hold text shown by ``str()``.
_TEXT_ATTRIBUTES = ("strerror", "filename", "filename2", "msg", "reason")


class Secrets:
    """The passwords of a connect call, and every piece of them a driver may
    repeat in an error.

    ``Secrets(*args, **kwargs)`` takes the arguments of a connect call: the
    passwords of DSNs among them (the user info and ``password`` query
    parameter of a URL, percent-decoded or not; ``password=`` key=value words,
    quoted or not, escaped or not, an unquoted one with the words after it up
    to the next libpq keyword), and the values of keyword arguments named like
    a password (``password``, ``passwd``, ``sslpassword``, ...), in mappings
    and sequences too. Each whole password and each of its pieces (its
    words, and the two sides of a word's "=") is masked, also as ``repr()``
    escapes it and encoded in bytes; a piece of one character is not, and
    one shorter than four characters only where it stands alone, so that
    masking does not garble the rest of a message.

    A driver's message may repeat a piece of a password without saying what
    it is (libpq answers ``password=s3cr3t XYZ`` with ``missing "=" after
    "XYZ"``): :func:`mask_dsn`, which reads only the text, cannot find it;
    :meth:`mask` and :meth:`scrub` can. The connect factories of pypool
    scrub the errors of their connects with the secrets of their arguments.
    """

    __slots__ = ("_bytes", "_pattern", "_texts")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._texts: set[str] = set()
        self._bytes: set[bytes] = set()
        self._pattern: tuple[re.Pattern[str] | None, re.Pattern[bytes] | None] | None = None
        for value in args:
            self._collect(None, value, 0)
        for key, value in kwargs.items():
            self._collect(key, value, 0)

    @classmethod
    def of(cls, factory: object) -> Secrets:
        """The secrets of a factory: those of a :class:`ConnectFactory` (or of
        any object with a ``secrets`` attribute holding a ``Secrets``), of the
        arguments of a ``functools.partial``; none for anything else."""
        secrets = getattr(factory, "secrets", None)
        if isinstance(secrets, Secrets):
            return secrets
        if isinstance(factory, functools.partial):
            found = cls(*factory.args, **factory.keywords)
            inner = cls.of(factory.func)
            found._texts |= inner._texts
            found._bytes |= inner._bytes
            return found
        return cls()

    # ----------------------------------------------------------- finding

    def _collect(self, key: str | None, value: Any, depth: int) -> None:
        secret = key is not None and _SECRET_KWARG.search(key) is not None
        if isinstance(value, str):
            if secret:
                self._add(value)
            else:
                self._from_dsn(value)
        elif isinstance(value, (bytes, bytearray)):
            if secret:
                raw = bytes(value)
                self._bytes.add(raw)
                self._bytes.update(piece for piece in raw.split() if len(piece) > 1)
                for encoding in ("utf-8", "latin-1"):
                    self._add(raw.decode(encoding, "ignore"))
        elif depth < 4 and isinstance(value, Mapping):
            for k, v in value.items():
                self._collect(str(k), v, depth + 1)
        elif depth < 4 and isinstance(value, (list, tuple)):
            for v in value:
                self._collect(key, v, depth + 1)

    def _from_dsn(self, text: str) -> None:
        for match in _URL_USERINFO.finditer(text):
            self._add(match.group(1), url=True)
        for match in _URL_QUERY.finditer(text):
            self._add(match.group(1), url=True)
        for match in _KV_PASSWORD.finditer(text):
            value = match.group(3)
            if value[:1] in ("'", '"'):
                value = value[1:-1] if len(value) > 1 and value[-1] == value[0] else value[1:]
            else:
                value += _rest_of_unquoted(text, match.end(3))
            self._add(value)

    def _add(self, value: str, *, url: bool = False) -> None:
        forms = {value, _ESCAPE.sub(r"\1", value)}
        if url:
            forms.add(urllib.parse.unquote(value))
        for form in forms:
            if not form.strip():
                continue
            self._texts.add(form)
            for word in form.split():
                pieces = [word, *word.split("=")] if "=" in word else [word]
                self._texts.update(piece for piece in pieces if len(piece) > 1)
        self._pattern = None

    def __bool__(self) -> bool:
        return bool(self._texts or self._bytes)

    def __repr__(self) -> str:
        return f"<pypool.dbapi.Secrets: {len(self._texts) + len(self._bytes)} pieces>"

    # ----------------------------------------------------------- masking

    def _patterns(self) -> tuple[re.Pattern[str] | None, re.Pattern[bytes] | None]:
        if self._pattern is None:
            texts = set(self._texts)
            for text in self._texts:  # as repr() shows them, escaped
                texts.add(repr(text)[1:-1])
            raw = set(self._bytes)
            raw.update(text.encode("utf-8") for text in self._texts)
            self._pattern = (_alternatives(texts), _alternatives_bytes(raw))
        return self._pattern

    def mask(self, text: str) -> str:
        """``text`` with every secret and every piece of one replaced by
        ``***``, then passed through :func:`mask_dsn`."""
        pattern = self._patterns()[0]
        if pattern is not None:
            text = pattern.sub("***", text)
        return mask_dsn(text)

    def _mask_bytes(self, data: bytes) -> bytes:
        pattern = self._patterns()[1]
        return data if pattern is None else pattern.sub(b"***", data)

    def scrub(self, exc: BaseException) -> BaseException:
        """Masks, in place, the secrets in ``exc`` and in every exception
        chained to it (``__cause__``, ``__context__``, the members of an
        exception group): their ``args`` (strings and bytes, in tuples,
        lists and dicts too), the text attributes ``str()`` shows
        (``strerror``, ``filename``, ...), a ``UnicodeError``'s ``object``
        (with as many ``*`` as it hides, so positions stay valid) and notes.
        Returns ``exc``, the same object: ``except`` clauses keep matching."""
        seen: set[int] = set()
        todo: list[BaseException | None] = [exc]
        while todo:
            e = todo.pop()
            if e is None or id(e) in seen:
                continue
            seen.add(id(e))
            self._scrub_one(e)
            members = getattr(e, "exceptions", ())
            if isinstance(members, tuple):
                todo += [m for m in members if isinstance(m, BaseException)]
            todo += [e.__cause__, e.__context__]
        return exc

    def _scrub_one(self, e: BaseException) -> None:
        changed, args = self._value(e.args, 0)
        if changed:
            with contextlib.suppress(Exception):
                e.args = args
        for name in _TEXT_ATTRIBUTES:
            value = getattr(e, name, None)
            if isinstance(value, (str, bytes)):
                changed, masked = self._value(value, 0)
                if changed:
                    with contextlib.suppress(Exception):
                        setattr(e, name, masked)
        if isinstance(e, UnicodeError):
            self._scrub_object(e)
        notes = getattr(e, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [self.mask(n) if isinstance(n, str) else n for n in notes]

    def _scrub_object(self, e: UnicodeError) -> None:
        """A UnicodeError's ``object``, masked with as many ``*`` as it hides."""
        text, raw = self._patterns()
        obj = getattr(e, "object", None)
        if isinstance(obj, str) and text is not None:
            masked: Any = text.sub(lambda m: "*" * len(m.group()), obj)
        elif isinstance(obj, bytes) and raw is not None:
            masked = raw.sub(lambda m: b"*" * len(m.group()), obj)
        else:
            return
        if masked != obj:
            with contextlib.suppress(Exception):
                e.object = masked  # type: ignore[attr-defined]

    def _value(self, value: Any, depth: int) -> tuple[bool, Any]:
        """``(changed, value masked)`` for the strings and bytes in ``value``."""
        if isinstance(value, str):
            masked: Any = self.mask(value)
            return masked != value, masked
        if isinstance(value, (bytes, bytearray)):
            masked = self._mask_bytes(bytes(value))
            if masked == value:
                return False, value
            return True, type(value)(masked)
        if depth < 4 and isinstance(value, (tuple, list)):
            results = [self._value(v, depth + 1) for v in value]
            if not any(changed for changed, _ in results):
                return False, value
            items = [v for _, v in results]
            return True, tuple(items) if isinstance(value, tuple) else items
        if depth < 4 and isinstance(value, dict):
            pairs = {k: self._value(v, depth + 1) for k, v in value.items()}
            if not any(changed for changed, _ in pairs.values()):
                return False, value
            return True, {k: v for k, (_, v) in pairs.items()}
        return False, value


def _rest_of_unquoted(text: str, pos: int) -> str:
    """The words after an unquoted value (ending at ``pos``) that belong to
    it: those up to the next one that starts with a libpq keyword and "="."""
    end = pos
    while (word := _WORD.match(text, end)) is not None:
        key, eq, _ = word.group(1).partition("=")
        if eq and key.strip().lower() in _LIBPQ_KEYWORDS:
            break
        end = word.end()
    return text[pos:end]


def _alternatives(texts: set[str]) -> re.Pattern[str] | None:
    """One pattern for all ``texts``, the longest first; a short one only
    where it stands alone."""
    if not texts:
        return None
    parts = [
        re.escape(t) if len(t) >= _SHORT else rf"(?<![0-9A-Za-z]){re.escape(t)}(?![0-9A-Za-z])"
        for t in sorted(texts, key=len, reverse=True)
    ]
    return re.compile("|".join(parts))


def _alternatives_bytes(raw: set[bytes]) -> re.Pattern[bytes] | None:
    """:func:`_alternatives` for bytes."""
    if not raw:
        return None
    alone_before, alone_after = rb"(?<![0-9A-Za-z])", rb"(?![0-9A-Za-z])"
    parts = [
        re.escape(t) if len(t) >= _SHORT else alone_before + re.escape(t) + alone_after
        for t in sorted(raw, key=len, reverse=True)
    ]
    return re.compile(b"|".join(parts))


def masked_repr(key: str | None, value: Any) -> str:
    if key is not None and _SECRET_KWARG.search(key) and value is not None:
        return "'***'"
    return mask_dsn(repr(value))
