"""Upstream side of the proxy: raw keep-alive HTTP/1.1 connections in a LIFO pool.

One `UpstreamConn` carries one exchange at a time (no pipelining to the upstream). Everything is
callbacks: the only task is the one `create_connection` needs when the pool is empty, so a warm
keep-alive request costs no task and no allocation beyond the exchange itself. Responses stream
straight to the client transport; backpressure pauses whichever side is reading.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, cast

import httptools

from gateway.answers import _CLOSE_FIELD
from gateway.http1 import HOP_BY_HOP, RESPONSE_DROP_PREFIXES, Head, response_head

if TYPE_CHECKING:
    from gateway.exchange import Exchange
    from gateway.server import Gateway

__all__ = ["UpstreamConn", "UpstreamPool"]

# How the response body travels to the client.
BODY_NONE, BODY_RAW, BODY_CHUNKED = 0, 1, 2
HEAD_LIMIT = 1 << 20  # response head bytes (status line + fields); larger -> 502

_KEEP_ALIVE_FIELD = b"connection: keep-alive\r\n"


class UpstreamConn(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        # No per-field callbacks: the head is read from the raw bytes once llhttp has accepted
        # it (on_headers_complete), and an upstream repeats its heads, so the sorted result of
        # the last one is kept and reused when the next is byte-identical (a Date field
        # changes once a second): a warm response head costs one bytes comparison.
        self.parser = httptools.HttpResponseParser(self)
        self._hb = b""             # response bytes from the start of the current head
        self._hb_pos = 0           # where the current head starts in _hb (after interim heads)
        self._in_head = False      # still collecting bytes for a head
        self._memo_block: bytes | None = None
        self._memo_reason = b""
        self._memo_head: Head | None = None
        self._memo_out: tuple[int, bytes, bytes] | None = None  # (status, framing, head out)
        self.ex: Exchange | None = None
        self.spliced = False
        self.reused = False
        self.idle_since = 0.0
        self._received = False    # any response byte for the current exchange
        self._complete = False    # message complete seen inside feed_data
        self._head_only = False   # HEAD/204/304: the parser must not wait for a body
        self._until_close = False  # response body delimited by the upstream closing
        self._interim = False
        self._mode = BODY_NONE
        self._status = 0
        self._keep_alive = False
        # What one data_received produces for the client goes out as ONE TLS write: head and
        # body of a small response share a record and a syscall instead of two each.
        self._out: list[bytes] = []

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass; it has the same methods.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None:  # bytes from an idle upstream: protocol error, do not reuse
            self.close()
            return
        if self.spliced:
            ex.client.write(data)
            return
        self._received = True
        if self._in_head:
            hb = self._hb = self._hb + data if self._hb else data
            if len(hb) - self._hb_pos > HEAD_LIMIT:
                self._broken("reset")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if ex.websocket and self._status == 101 and ex.response_started:
                self._flush(ex)
                self.spliced = True
                ex.client.start_splice(ex, data[e.args[0]:])
            else:
                self._broken("reset")
            return
        except httptools.HttpParserError:
            self._broken("reset")
            return
        if self._head_only:  # the parser may still expect a body it will never get
            self.parser = httptools.HttpResponseParser(self)
            self._complete, self._head_only = True, False
        if self._complete:
            self._complete = False
            self._finish()  # writes what this read produced, head to end, in one go
        elif self._out:
            self._flush(ex)

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost does the bookkeeping

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.forget(self)
        ex, self.ex = self.ex, None
        if ex is None:
            return
        if self.spliced:
            ex.client.close()
        elif not ex.response_started:
            if self.reused and not self._received and ex.retryable:
                ex.retryable = False  # the pool's idle connection had just died: try a fresh one
                self.pool.connect(ex)
            else:
                ex.client.upstream_failed(ex, 502, "reset")
        elif self._until_close:  # body delimited by close: this is its normal end
            ex.upstream = None
            self._end_body(ex)
            self._flush(ex)
            ex.client.response_done(ex, can_reuse=False)
        else:  # truncated response: the only honest signal left is to cut the client too
            ex.client.abort()

    def pause_writing(self) -> None:
        if self.ex is not None:
            self.ex.client.pause_for_upstream()

    def resume_writing(self) -> None:
        if self.ex is not None:
            self.ex.client.resume_for_upstream()

    # --- sending -------------------------------------------------------------------------------

    def attach(self, ex: Exchange, *, reused: bool) -> None:
        """Send `ex`'s request head and whatever body already arrived."""
        assert self.transport is not None
        self.ex, self.reused, ex.upstream = ex, reused, self
        self._received = self._complete = self._head_only = self._until_close = False
        self._interim, self._mode = False, BODY_NONE
        self._hb, self._hb_pos, self._in_head = b"", 0, True
        ex.t_sent = self.pool.loop.time()
        self.transport.write(ex.head)
        self.transport.resume_reading()  # no-op unless a slow client had paused it
        pending, ex.pending = ex.pending, None
        if pending:
            for chunk in pending:
                self.send_body(chunk)
            ex.client.resume_for_pending()
        if ex.request_done:
            self.end_body()

    def send_body(self, chunk: bytes) -> None:
        assert self.transport is not None and self.ex is not None
        if self.ex.chunked_request:
            self.transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            self.transport.write(chunk)

    def end_body(self) -> None:
        """The whole request is out: the upstream's response_timeout starts now (a long upload
        is not a slow upstream). The gateway's tick checks the deadline: no timer per request."""
        ex = self.ex
        if self.transport is None or ex is None:
            return
        if ex.chunked_request:
            self.transport.write(b"0\r\n\r\n")
        if not ex.response_started:
            ex.deadline = self.pool.loop.time() + self.pool.response_timeout

    # --- response parser callbacks ---------------------------------------------------------------

    def _read_head(self) -> tuple[bytes, Head]:
        """(reason, sorted fields) of the head llhttp has just accepted, from the raw bytes."""
        hb, pos = self._hb, self._hb_pos
        end = hb.find(b"\r\n\r\n", pos)
        self._hb_pos = end + 4  # an interim head is followed directly by the next head
        raw = hb[pos:end + 2]  # status line and fields
        if raw == self._memo_block:
            assert self._memo_head is not None
            return self._memo_reason, self._memo_head
        line_end = raw.find(b"\r\n")
        status_line = raw[:line_end].split(b" ", 2)
        reason = status_line[2] if len(status_line) > 2 else b""
        head = Head(HOP_BY_HOP, RESPONSE_DROP_PREFIXES, HEAD_LIMIT)
        head.add_block(raw[line_end + 2:])
        head.finish()
        self._memo_block, self._memo_reason, self._memo_head = raw, reason, head
        self._memo_out = None
        return reason, head

    def on_headers_complete(self) -> None:
        ex = self.ex
        assert ex is not None
        status = self._status = self.parser.get_status_code()
        reason, head = self._read_head()  # HeadersTooLarge -> HttpParserError: 502
        if 100 <= status < 200 and status != 101:  # interim (100 Continue, 103): pass it on
            self._interim = True
            if not ex.http10:  # with its end-to-end fields: 103's Link fields are the point
                self._out.append(response_head(b"HTTP/1.1", status, reason, head.lines, b""))
            return
        client = ex.client
        self._in_head, self._hb = False, b""
        ex.deadline = 0.0
        ex.status = status
        ex.upstream_seconds = self.pool.loop.time() - ex.t_sent
        framing = b""
        if status == 101 and ex.websocket and head.upgrade == b"websocket":
            framing, self._mode = b"connection: upgrade\r\nupgrade: websocket\r\n", BODY_NONE
        elif ex.method == "HEAD" or status in (204, 304):
            self._mode, self._head_only = BODY_NONE, ex.method == "HEAD"
            self._keep_alive = self.parser.should_keep_alive()
        elif head.content_length and not head.chunked:
            self._mode = BODY_RAW
        else:  # chunked, or delimited by close: re-frame for the client (chunks or close)
            self._until_close = not head.chunked
            if ex.http10:
                self._mode, ex.close_after = BODY_RAW, True
            else:
                self._mode, framing = BODY_CHUNKED, b"transfer-encoding: chunked\r\n"
        if ex.websocket and status != 101:
            ex.close_after = True  # the client's parser is past the upgrade request
        if status != 101:  # the Connection field for the client (ClientConn.connection_field)
            if ex.close_after or not ex.keep_alive or client.closing or client.gw.stopping:
                framing += _CLOSE_FIELD
            elif ex.http10:
                framing += _KEEP_ALIVE_FIELD
        ex.response_started = True
        memo = self._memo_out  # the head as sent to the client, for the memoized upstream head
        if memo is not None and memo[0] == status and memo[1] == framing:
            self._out.append(memo[2])
        else:
            out = response_head(b"HTTP/1.1", status, reason, head.lines, framing)
            if head is self._memo_head:
                self._memo_out = (status, framing, out)
            self._out.append(out)

    def on_body(self, chunk: bytes) -> None:
        if self._mode == BODY_CHUNKED:
            self._out += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
        else:
            self._out.append(chunk)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        else:
            self._complete = True
            # Read now: llhttp resets its flags once this callback returns.
            self._keep_alive = self.parser.should_keep_alive()

    # --- endings -------------------------------------------------------------------------------

    def _end_body(self, ex: Exchange) -> None:
        if self._mode == BODY_CHUNKED:
            self._out.append(b"0\r\n\r\n")

    def _flush(self, ex: Exchange) -> None:
        out, self._out = self._out, []
        ex.client.write_many(out)

    def _finish(self) -> None:
        ex, self.ex = self.ex, None
        assert ex is not None
        if self._mode == BODY_CHUNKED:
            self._out.append(b"0\r\n\r\n")
        out, self._out = self._out, []
        ex.client.write_many(out)
        # Reusable only if the whole request went out and the upstream keeps the connection.
        reuse = ex.request_done and self._keep_alive and not self._until_close
        ex.upstream = None
        if reuse:
            self.pool.release(self)
        else:
            self.close()
        ex.client.response_done(ex, can_reuse=True)

    def timed_out(self) -> None:
        """No response head before the deadline (called by the gateway's tick)."""
        if self.ex is not None:
            self._broken("timeout", status=504)

    def _broken(self, kind: str, status: int = 502) -> None:
        """The upstream failed this exchange: never reuse the connection; tell the client side."""
        ex, self.ex = self.ex, None
        self._out = []
        self.close()
        if ex is None:
            return
        ex.deadline = 0.0
        if ex.response_started:
            ex.client.abort()
        else:
            ex.client.upstream_failed(ex, status, kind)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # unread data or a half-sent body: a clean close helps nobody

    def detach(self) -> None:
        """The client went away mid-exchange: this connection's state is unknown, drop it."""
        ex, self.ex = self.ex, None
        if ex is not None:
            ex.deadline = 0.0
        self._out = []
        self.close()


class UpstreamPool:
    def __init__(self, gateway: Gateway, host: str, port: int) -> None:
        self.gw = gateway
        self.loop = gateway.loop
        self.host, self.port = host, port
        self.connect_timeout = gateway.cfg.connect_timeout
        self.response_timeout = gateway.cfg.response_timeout
        self.max_idle = gateway.cfg.upstream_pool_size
        self.idle: list[UpstreamConn] = []

    def acquire(self, ex: Exchange) -> None:
        """Attach `ex` to an idle connection now, or to a new one when it is up."""
        while self.idle:
            up = self.idle.pop()  # LIFO: the warmest connection is least likely to be closed
            if up.transport is not None and not up.transport.is_closing():
                up.attach(ex, reused=True)
                return
        self.connect(ex)

    def connect(self, ex: Exchange) -> None:
        coro = self.loop.create_connection(lambda: UpstreamConn(self), self.host, self.port)
        task = self.loop.create_task(coro)
        timer = self.loop.call_later(self.connect_timeout, task.cancel)
        ex.connecting = task

        def done(t: asyncio.Task[tuple[asyncio.Transport, UpstreamConn]]) -> None:
            timer.cancel()
            ex.connecting = None
            if t.cancelled():
                if not ex.abandoned:
                    ex.client.upstream_failed(ex, 504, "timeout")
                return
            if (exc := t.exception()) is not None:
                if not ex.abandoned:
                    ex.client.upstream_failed(ex, 502, "connect", detail=str(exc))
                return
            _, up = t.result()
            if ex.abandoned:
                self.release(up)
            else:
                up.attach(ex, reused=False)

        task.add_done_callback(done)

    def release(self, up: UpstreamConn) -> None:
        if up.transport is None or up.transport.is_closing() or len(self.idle) >= self.max_idle:
            up.close()
            return
        up.transport.resume_reading()  # it may have been paused for a slow client
        up.idle_since = self.loop.time()
        self.idle.append(up)

    def forget(self, up: UpstreamConn) -> None:
        if up in self.idle:
            self.idle.remove(up)

    def sweep(self, now: float, max_idle_seconds: float) -> None:
        """Close connections idle too long (the upstream would close them soon anyway)."""
        keep = []
        for up in self.idle:
            if now - up.idle_since > max_idle_seconds:
                up.close()
            else:
                keep.append(up)
        self.idle = keep

    def close(self) -> None:
        for up in self.idle:
            up.close()
        self.idle = []
