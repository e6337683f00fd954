"""Client side of the proxy: one `ClientConn` (asyncio.Protocol + httptools) per TLS connection.

Per request, inside the parser callback and before a byte goes upstream: the identity (parsed
once per connection) is checked against the clock, the revocation state and the route policy
(`Authorizer.check`). Allowed requests are written to a pooled upstream connection as they
stream in; refusals are answered here. Responses are produced strictly in request order: a
pipelined request waits in `queue` (reading paused) until the one before it is answered.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools

from gateway.answers import ExchangeAnswers
from gateway.exchange import PAUSE_PENDING, PAUSE_PIPELINE, PAUSE_UPGRADE, PAUSE_UPSTREAM, Exchange
from gateway.http1 import (
    DROP_PREFIXES,
    Head,
    HeadersTooLarge,
    normalize_host,
    normalize_target_cached,
)
from gateway.problems import problem_response

if TYPE_CHECKING:
    from gateway.identity import Identity
    from gateway.server import Gateway
    from gateway.upstream import UpstreamConn

__all__ = ["ClientConn"]

PENDING_LIMIT = 256 * 1024  # body bytes held while the upstream connection is being set up
READ_BUFFER = 64 * 1024
FAST_HEAD_MAX = 8192  # larger heads always take the per-field path
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


class _NoCallbacks:
    __slots__ = ()


# What a closed connection holds instead of its parsers (buffer_updated never feeds it).
_CLOSED_PARSER = httptools.HttpRequestParser(_NoCallbacks())


class _FastCallbacks:
    """What the fast-path parser may call: no per-field, URL or message-begin callbacks (the
    head is sorted from its raw bytes instead; see ClientConn.buffer_updated)."""

    __slots__ = ("on_body", "on_headers_complete", "on_message_complete")

    def __init__(self, conn: ClientConn) -> None:
        self.on_headers_complete = conn.on_headers_complete
        self.on_body = conn.on_body
        self.on_message_complete = conn.on_message_complete


class ClientConn(ExchangeAnswers, asyncio.BufferedProtocol):
    """A BufferedProtocol: TLS records decrypt straight into one reused buffer. (With plain
    data_received, the TLS layer allocates a 256 KiB bytes object per read: measured as a
    sixth of the gateway's CPU in mmap/munmap under keep-alive load.) The buffer is the
    gateway's, shared by all its connections: the loop fills it and calls buffer_updated
    before it reads anything else, and whatever outlives that call is copied. So a connection
    costs no 64 KiB of its own, idle or not.

    Two parsers, switched only between messages. The general one calls back per field, URL
    and message start. The fast one serves the common case: a read that holds exactly one
    complete head of a body-less HTTP/1.1 request, at a message boundary. Its head is sorted
    from the raw bytes, and a client repeats its fields on a keep-alive connection, so the
    sorted result of the previous head is reused when the field block is byte-identical.
    Either way the fields pass through the same `Head.add` rules."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self._rbuf = gw.read_buffer
        self.transport: asyncio.Transport | None = None
        self.ident: Identity | None = None
        # The field sorter is the parser's on_header callback itself (bound before the parser
        # looks it up): no per-field list of tuples, no second pass.
        self._head = Head(gw.drop_headers, DROP_PREFIXES, gw.cfg.max_header_bytes)
        self.on_header: Callable[[bytes, bytes], None] = self._head.add
        self.parser = self._slow = httptools.HttpRequestParser(self)
        self._fast = httptools.HttpRequestParser(_FastCallbacks(self))
        self._fast_max = min(FAST_HEAD_MAX, gw.cfg.max_header_bytes // 2)
        self._in_msg = False  # a parser is inside a message: stay with it until it completes
        self._raw: bytes | None = None      # the fast path's head, until on_headers_complete
        self._raw_line_end = 0
        self._raw_head: Head | None = None
        self._memo_block: bytes | None = None
        self._memo_head: Head | None = None
        self.current: Exchange | None = None   # the exchange being answered
        self.parsing: Exchange | None = None   # the exchange whose request is being read
        self.queue: deque[Exchange] = deque()
        self.spliced: UpstreamConn | None = None
        self.ws_wait: Exchange | None = None
        self.draining = False
        self.closing = False
        self.write_paused = False
        self.last_active = 0.0
        self.head_since = 0.0  # when the head being read began (0: none is half-read)
        self._paused = 0
        self._in_next = False
        self._fwd = b""
        self._url = b""
        self._upgrade_ex: Exchange | None = None
        self._host_raw: bytes | None = None
        self._host = ""

    # --- connection ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass; it has the same methods.
        self.transport = tr = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            self.ident = self.gw.identities.get(der) if der else None
        except ValueError:
            self.ident = None
        if self.ident is None:  # CERT_REQUIRED makes this unreachable; fail closed regardless
            tr.abort()
            return
        self.gw.metrics.handshake(ssl_object.session_reused)
        peer = transport.get_extra_info("peername")
        addr = peer[0] if isinstance(peer, tuple) else ""
        self._fwd = (f"x-forwarded-for: {addr}\r\nx-forwarded-proto: https\r\n".encode()
                     + self.ident.headers)
        self.last_active = self.gw.loop.time()
        self.gw.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.transport = None
        self.gw.connection_closed(self)
        for ex in (self.current, *self.queue):
            if ex is None:
                continue
            ex.abandoned = True  # a pending connect hands its connection back to the pool
            if ex.upstream is not None:
                ex.upstream.detach()
        if self.spliced is not None:
            self.spliced.close()
        # The parsers call back into this object (a reference cycle): drop them so the
        # connection is freed by reference counting at once, not by a later GC pass.
        self.parser = self._slow = self._fast = _CLOSED_PARSER

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._rbuf

    def buffer_updated(self, nbytes: int) -> None:
        # `data` is a view of the reused buffer: whatever outlives this call is copied.
        data = self._rbuf[:nbytes]
        self.last_active = self.gw.loop.time()
        if self.spliced is not None:
            if self.spliced.transport is not None:
                self.spliced.transport.write(bytes(data))
            return
        if self.ws_wait is not None:  # bytes sent eagerly after an upgrade request
            self.ws_wait.ws_early.append(bytes(data))
            self._pause(PAUSE_UPGRADE)
            return
        if self.draining or self.closing:
            return
        if not self._in_msg:  # between messages: pick the parser for the next one
            self.parser = self._slow
            if nbytes <= self._fast_max:
                self._fast_path(bytes(data))
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._after_upgrade_request(bytes(data[e.args[0]:]))
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, HeadersTooLarge):
                self._fatal(431, "headers_too_large")
            else:
                raise
        except httptools.HttpParserError:
            self._fatal(400, "bad_request")

    def _fast_path(self, raw: bytes) -> None:
        """Use the fast parser if `raw` is exactly one complete head of an HTTP/1.1 request
        without body or upgrade (so the message ends within this read)."""
        end = raw.find(b"\r\n\r\n")
        if end != len(raw) - 4:
            return
        line_end = raw.find(b"\r\n")
        if raw[line_end - 9:line_end] != b" HTTP/1.1":
            return
        block = raw[line_end + 2:end + 2]
        if block == self._memo_block:
            head = self._memo_head
        else:
            head = Head(self.gw.drop_headers, DROP_PREFIXES, self.gw.cfg.max_header_bytes)
            try:
                head.add_block(block)
            except HeadersTooLarge:
                return
            if not head.finish():
                return  # malformed: the general path answers it
            self._memo_block, self._memo_head = block, head
        assert head is not None
        if head.content_length or head.transfer_encoding or head.upgrade is not None:
            return
        self._raw, self._raw_line_end, self._raw_head = raw, line_end, head
        self.parser = self._fast
        self._in_msg = True

    def eof_received(self) -> bool | None:
        return False

    def pause_writing(self) -> None:
        # The client reads slower than the upstream sends: stop reading the upstream.
        self.write_paused = True
        up = self.spliced or (self.current.upstream if self.current else None)
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self.spliced or (self.current.upstream if self.current else None)
        if up is not None and up.transport is not None:
            up.transport.resume_reading()

    def _pause(self, why: int) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused |= why

    def _resume(self, why: int) -> None:
        if self._paused & why:
            self._paused &= ~why
            if not self._paused and self.transport is not None and not self.closing:
                self.transport.resume_reading()
                # Our pause is not the client's silence: its clocks restart now.
                self.last_active = now = self.gw.loop.time()
                self.head_since = self.head_since and now

    def pause_for_upstream(self) -> None:
        self._pause(PAUSE_UPSTREAM)

    def resume_for_upstream(self) -> None:
        self._resume(PAUSE_UPSTREAM)

    def resume_for_pending(self) -> None:
        self._resume(PAUSE_PENDING)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    def write_many(self, parts: list[bytes]) -> None:
        """One TLS write: joined when small (one record), else handed over as a list."""
        if self.transport is None or self.closing or not parts:
            return
        if len(parts) == 1:
            self.transport.write(parts[0])
        elif sum(map(len, parts)) <= 16384:
            self.transport.write(b"".join(parts))
        else:
            self.transport.writelines(parts)

    def close(self) -> None:
        """Close after what is already written has been sent."""
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def _fatal(self, status: int, reason: str) -> None:
        # A malformed stream cannot be resynchronised: answer (if nothing is in flight) and close.
        if self.current is None:
            self.write(problem_response(status, reason, close=True))
            self.gw.access_log.log(self.ident, "-", "", "", "-", status, None)
        self.close()

    # --- request parser callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:  # general parser only
        self._in_msg = True
        self.head_since = self.gw.loop.time()
        self._head.reset()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head.size += len(url)

    def on_headers_complete(self) -> None:
        self.head_since = 0.0
        p = self.parser
        method_b = p.get_method()
        if p is self._fast:
            raw, self._raw = self._raw, None
            if raw is None:  # a second head in one fast read: cannot happen (see _fast_path)
                self._fatal(400, "bad_request")
                return
            head = self._raw_head
            assert head is not None
            url = raw[len(method_b) + 1:self._raw_line_end - 9].strip(b" ")
            well_formed = True  # checked when the head was sorted
            http10 = False  # the fast path takes HTTP/1.1 only
        else:
            url, self._url = self._url, b""
            head = self._head
            well_formed = head.finish()
            http10 = p.get_http_version() == "1.0"
        method = _METHODS.get(method_b) or method_b.decode("ascii")
        ex = Exchange(self, method, http10, p.should_keep_alive())
        self.parsing = ex
        target = normalize_target_cached(url)
        if ex.method == "CONNECT":  # a reverse proxy has no tunnels to offer
            ex.refusal, ex.close_after = (405, "method_not_allowed"), True
        elif not well_formed or target is None or (head.host is None and not ex.http10
                                                   and target[2] is None):
            ex.refusal, ex.close_after = (400, "bad_request"), True
        else:
            path, fwd_target, url_host = target
            host_b = url_host or head.host or b""
            if host_b != self._host_raw:  # clients repeat their Host: normalise it once
                self._host_raw, self._host = host_b, normalize_host(host_b)
            ex.host = self._host
            ex.path = path
            lines = head.lines  # never modified here: a fast-path head is shared between messages
            if url_host is not None:  # absolute-form: its authority replaces Host (RFC 9112)
                lines = [ln for ln in lines if ln[:5].lower() != b"host:"]
            if url_host is not None or head.host is None:
                lines = [*lines, b"host: " + (url_host or self.gw.upstream_authority) + b"\r\n"]
            if head.upgrade is not None:
                self._upgrade_ex = ex
                ex.close_after = True  # after an upgrade the connection never returns to HTTP
                ex.websocket = (head.upgrade == b"websocket" and head.connection_has(b"upgrade")
                                and ex.method == "GET")
            ex.chunked_request = head.chunked
            ex.expect_continue = head.expect_continue
            ex.retryable = not head.chunked and not head.content_length
            ex.head = b"".join((
                method_b, b" ", fwd_target, b" HTTP/1.1\r\n", *lines,
                b"transfer-encoding: chunked\r\n" if head.chunked else b"",
                b"connection: upgrade\r\nupgrade: websocket\r\n" if ex.websocket else b"",
                self._fwd, b"\r\n"))
        if self.current is None and not self.queue:
            self._start(ex)
        else:
            self.queue.append(ex)
            self._pause(PAUSE_PIPELINE)

    def on_body(self, chunk: bytes) -> None:
        ex = self.parsing
        if ex is None or ex.refusal is not None or ex.response_finished or self.closing:
            return  # refused or already answered: the body is read and dropped
        if ex.upstream is not None:
            ex.upstream.send_body(chunk)
            return
        if ex.pending is None:
            ex.pending = []
        ex.pending.append(chunk)
        ex.pending_bytes += len(chunk)
        if ex.pending_bytes > PENDING_LIMIT:
            self._pause(PAUSE_PENDING)

    def on_message_complete(self) -> None:
        self._in_msg = False
        ex, self.parsing = self.parsing, None
        if ex is None:
            return
        ex.request_done = True
        if ex.response_finished:
            self._exchange_done(ex)
        elif ex.upstream is not None:
            ex.upstream.end_body()

    def _after_upgrade_request(self, rest: bytes) -> None:
        ex, self._upgrade_ex = self._upgrade_ex, None
        if ex is not None and ex.websocket and ex.refusal is None and not ex.response_finished:
            self.ws_wait = ex  # hold client bytes until the upstream says 101
            if rest:
                ex.ws_early.append(rest)
        else:
            self.draining = True  # answered (or refused) without upgrading; closes after

    # --- exchanges -----------------------------------------------------------------------------

    def _start(self, ex: Exchange) -> None:
        self.current = ex
        gw = self.gw
        if ex.refusal is not None:
            self._refuse(ex, *ex.refusal, "-")
            return
        assert self.ident is not None
        d = gw.authz.check(self.ident, gw.clock(), gw.mono(), gw.revocation,
                           ex.method, ex.host, ex.path)
        ex.rule = d.rule
        if not d.allowed:
            gw.metrics.refused(d.reason)
            if d.reason in ("revoked", "expired"):
                ex.close_after = True  # this certificate will not get better on this connection
            self._refuse(ex, d.status, d.reason, d.rule)
            return
        gw.metrics.allowed()
        gw.pool.acquire(ex)

    def _exchange_done(self, ex: Exchange) -> None:
        if not (ex.response_finished and (ex.request_done or ex.close_after)):
            return  # still reading the request body of an answered (refused) request
        if self.current is ex:
            self.current = None
        if self._paused & (PAUSE_UPSTREAM | PAUSE_PENDING):
            self._resume(PAUSE_UPSTREAM | PAUSE_PENDING)
        gw = self.gw
        self.last_active = gw.loop.time()
        if ex.close_after or not ex.keep_alive or gw.stopping:
            self.close()
            return
        if self.queue or self._paused & PAUSE_PIPELINE:
            self._next()

    def _next(self) -> None:
        # A loop, not recursion: a burst of pipelined refusals must not grow the stack.
        if self._in_next:
            return
        self._in_next = True
        try:
            while self.current is None and self.queue and not self.closing:
                self._start(self.queue.popleft())
        finally:
            self._in_next = False
        if not self.queue:
            self._resume(PAUSE_PIPELINE)

    @property
    def busy(self) -> bool:
        return self.current is not None or bool(self.queue) or self.spliced is not None

