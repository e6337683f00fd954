"""HTTP/1.1 pieces of the proxy: header hygiene, request targets, message heads.

Hop-by-hop fields (RFC 9110 §7.6.1) are removed both ways: Connection and every field it names,
Keep-Alive, TE, Trailer, Transfer-Encoding (the gateway re-frames bodies itself), Upgrade (except
on the WebSocket path, which re-adds it), Proxy-Connection and every Proxy-* field. Inbound
identity fields are removed too, so the upstream sees only what the gateway vouches for.
"""

from __future__ import annotations

import httptools

__all__ = ["Head", "normalize_host", "normalize_target", "normalize_target_cached",
           "response_head", "scan_headers"]

HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding",
                        b"upgrade"))
# The gateway sets these itself; a client must not be able to pre-fill them.
IDENTITY = frozenset((b"x-forwarded-client-cert", b"x-forwarded-for", b"x-forwarded-proto",
                      b"x-forwarded-host", b"forwarded"))
REQUEST_DROP = HOP_BY_HOP | IDENTITY
DROP_PREFIXES = (b"proxy-", b"x-nodetrust-")
RESPONSE_DROP_PREFIXES = (b"proxy-",)


class HeadersTooLarge(Exception):
    pass


_HOST, _CONNECTION, _TE, _LENGTH, _UPGRADE, _EXPECT = 1, 2, 3, 4, 5, 6
_FRAMING = {b"host": _HOST, b"connection": _CONNECTION, b"transfer-encoding": _TE,
            b"content-length": _LENGTH, b"upgrade": _UPGRADE, b"expect": _EXPECT}
_CONNECTION_KEYWORDS = frozenset((b"close", b"keep-alive", b"upgrade"))


class Head:
    """Sorts one message's fields, as they arrive, into kept lines and framing facts.

    `add` is installed as the parser's on_header callback itself, so the per-field work is one
    call, one dict lookup and one concatenation. `reset()` between messages.
    """

    __slots__ = ("chunked", "connection", "content_length", "drop", "duplicate_host",
                 "expect_continue", "host", "limit", "lines", "prefixes", "size",
                 "transfer_encoding", "upgrade")

    def __init__(self, drop: frozenset[bytes], prefixes: tuple[bytes, ...],
                 limit: int = 1 << 20) -> None:
        self.drop, self.prefixes, self.limit = drop, prefixes, limit  # drop ⊇ HOP_BY_HOP
        self.reset()

    def reset(self) -> None:
        self.lines: list[bytes] = []         # kept fields, "name: value\r\n"
        self.host: bytes | None = None
        self.upgrade: bytes | None = None    # lower-cased Upgrade value
        self.connection: set[bytes] | None = None  # lower-cased Connection tokens
        self.chunked = self.content_length = self.duplicate_host = False
        self.transfer_encoding = False  # any Transfer-Encoding field (chunked or not)
        self.expect_continue = False
        self.size = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.size += len(name) + len(value) + 4
        if self.size > self.limit:
            raise HeadersTooLarge
        lname = name.lower()
        kind = _FRAMING.get(lname)
        if kind is None:
            if lname in self.drop or lname.startswith(self.prefixes):
                return
        elif kind == _HOST:
            if self.host is not None:
                self.duplicate_host = True  # RFC 9112 §3.2: more than one Host field is a 400
            self.host = value
        elif kind == _LENGTH:
            self.content_length = True
        elif kind == _EXPECT:
            self.expect_continue = value.strip().lower() == b"100-continue"
        elif kind == _TE:
            self.transfer_encoding = True
            self.chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            return
        elif kind == _CONNECTION:
            tokens = {t.strip() for t in value.lower().split(b",")}
            self.connection = tokens if self.connection is None else self.connection | tokens
            return
        elif kind == _UPGRADE:
            self.upgrade = value.strip().lower()
            return
        self.lines.append(name + b": " + value + b"\r\n")

    def add_block(self, block: bytes) -> None:
        """All fields of a head at once, exactly as received: `name:value` lines, each ending in
        CRLF. Only for bytes llhttp has accepted as a head (no obs-fold, no bare LF, no space
        before the colon), so this sees the same (name, value) pairs its callbacks would: the
        name up to the colon, the value with its leading whitespace stripped."""
        for line in block.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b":")
                self.add(name, value.lstrip(b" \t"))

    def finish(self) -> bool:
        """Apply Connection-named removals; False if the message is malformed."""
        if self.connection and (extra := self.connection - _CONNECTION_KEYWORDS):
            # Fields the Connection header names are hop-by-hop too (rare: no pass otherwise).
            self.lines = [ln for ln in self.lines
                          if ln.partition(b":")[0].lower() not in extra]
        return not self.duplicate_host

    def connection_has(self, token: bytes) -> bool:
        return self.connection is not None and token in self.connection


def scan_headers(raw: list[tuple[bytes, bytes]], drop: frozenset[bytes],
                 prefixes: tuple[bytes, ...]) -> Head | None:
    """All fields at once (tests, tools); None if malformed."""
    h = Head(drop, prefixes)
    for name, value in raw:
        h.add(name, value)
    return h if h.finish() else None


_TARGETS: dict[bytes, tuple[str, bytes, bytes | None] | None] = {}
_TARGETS_MAX, _TARGET_CACHED_LEN = 4096, 512


def normalize_target_cached(target: bytes) -> tuple[str, bytes, bytes | None] | None:
    """`normalize_target`, remembered for short targets (clients repeat their URLs); bounded:
    a scan of many distinct URLs only ever holds 4096 of them."""
    try:
        return _TARGETS[target]
    except KeyError:
        pass
    result = normalize_target(target)
    if len(target) <= _TARGET_CACHED_LEN:
        if len(_TARGETS) >= _TARGETS_MAX:
            _TARGETS.clear()
        _TARGETS[target] = result
    return result


def normalize_host(host: bytes) -> str:
    """Host field -> the name policies match: lower case, no port."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text.partition("]")[0] + "]"
    return text.rpartition(":")[0] if text.count(":") == 1 else text


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def normalize_target(target: bytes) -> tuple[str, bytes, bytes | None] | None:
    """Request target -> (path for policy, target to forward, host from absolute-form).

    What the upstream receives is exactly what the policy matched: percent-encoded unreserved
    characters are decoded, dot segments removed and slashes merged (RFC 3986 §6.2.2), so
    "/public/../admin" or "/%61dmin" cannot slip past a rule for "/admin". Encoded "/" or "\\"
    and NUL are refused (None), as are targets that are not origin- or absolute-form.
    """
    host = None
    if not target.startswith(b"/"):
        if target == b"*":
            return "*", target, None
        if not target[:8].lower().startswith((b"http://", b"https://")):
            return None
        try:
            url = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            return None
        host = url.host
        target = (url.path or b"/") + (b"?" + url.query if url.query else b"")
    path, sep, query = target.partition(b"?")
    path = path.partition(b"#")[0]
    if b"\\" in path:
        return None
    if b"%" not in path and b"/." not in path and b"//" not in path:
        return path.decode("latin-1"), target, host
    norm = _normalize_path(path)
    if norm is None:
        return None
    return norm.decode("latin-1"), norm + (b"?" + query if sep else b""), host


def _normalize_path(path: bytes) -> bytes | None:
    out = bytearray()
    i = 0
    while i < len(path):
        c = path[i]
        if c == 0x25:  # '%'
            pair = path[i + 1:i + 3]
            if len(pair) != 2 or not set(pair) <= _HEX:
                return None
            byte = int(pair, 16)
            if byte in (0x2F, 0x5C, 0x00):  # encoded / \ NUL: ambiguous to upstream routers
                return None
            out += bytes([byte]) if byte in _UNRESERVED else b"%" + pair.upper()
            i += 3
        else:
            out.append(c)
            i += 1
    segments: list[bytes] = []
    parts = bytes(out).split(b"/")[1:]
    for n, seg in enumerate(parts):
        last = n == len(parts) - 1
        if seg == b"..":
            if segments:
                segments.pop()
            if last:
                segments.append(b"")
        elif seg == b".":
            if last:
                segments.append(b"")
        elif seg or last:
            segments.append(seg)
    return b"/" + b"/".join(segments)


_STATUS_LINES: dict[tuple[bytes, int, bytes], bytes] = {}


def response_head(version: bytes, status: int, reason: bytes, lines: list[bytes],
                  framing: bytes) -> bytes:
    """Status line + kept fields + framing/connection fields + blank line."""
    key = (version, status, reason)
    status_line = _STATUS_LINES.get(key)
    if status_line is None:
        status_line = b"%s %d %s\r\n" % key
        if len(_STATUS_LINES) < 1024 and len(reason) <= 64:  # bounded: reasons are few
            _STATUS_LINES[key] = status_line
    return b"".join((status_line, *lines, framing, b"\r\n"))
