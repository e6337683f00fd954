"""How a `ClientConn` answers an exchange: refusals, upstream failures, a finished upstream
response, a client that stopped mid-request, and the switch to splicing after a 101. Mixed
into `gateway.proxy.ClientConn`, which owns the parsing and the order of exchanges."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.exchange import PAUSE_UPGRADE, Exchange
from gateway.problems import problem_response

if TYPE_CHECKING:
    from gateway.identity import Identity
    from gateway.server import Gateway
    from gateway.upstream import UpstreamConn

_CLOSE_FIELD = b"connection: close\r\n"


class ExchangeAnswers:
    # Provided by ClientConn.
    gw: Gateway
    ident: Identity | None
    closing: bool
    spliced: UpstreamConn | None
    ws_wait: Exchange | None
    parsing: Exchange | None
    current: Exchange | None
    head_since: float
    last_active: float
    _paused: int

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def _exchange_done(self, ex: Exchange) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def _resume(self, why: int) -> None:
        raise NotImplementedError

    def _refuse(self, ex: Exchange, status: int, reason: str, rule: str) -> None:
        self._unsent_body_means_close(ex)
        ex.status = status
        self.write(problem_response(status, reason, rule,
                                    close=ex.close_after or not ex.keep_alive))
        self.gw.access_log.log(self.ident, ex.method, ex.host, ex.path, rule, status, None)
        ex.response_finished = True
        self._exchange_done(ex)

    def connection_field(self, ex: Exchange) -> bytes:
        """Connection field for `ex`'s response head."""
        if ex.close_after or not ex.keep_alive or self.closing or self.gw.stopping:
            return _CLOSE_FIELD
        return b"connection: keep-alive\r\n" if ex.http10 else b""

    def upstream_failed(self, ex: Exchange, status: int, kind: str, detail: str = "") -> None:
        if ex.abandoned or ex.response_finished:
            return
        self.gw.metrics.upstream_error(kind)
        ex.upstream = None
        if not ex.request_done:
            ex.close_after = True  # the rest of the body has nowhere to go
        reason = "upstream_timeout" if status == 504 else "upstream_unavailable"
        ex.status = status
        self.write(problem_response(status, reason, ex.rule,
                                    close=ex.close_after or not ex.keep_alive))
        self.gw.access_log.log(self.ident, ex.method, ex.host, ex.path, ex.rule, status, None)
        ex.response_finished = True
        self._exchange_done(ex)

    def response_done(self, ex: Exchange, *, can_reuse: bool) -> None:
        """The upstream's response has been written to the client in full."""
        ex.response_finished = True
        ex.upstream = None
        gw = self.gw
        if ex.upstream_seconds is not None:
            gw.metrics.latency(ex.upstream_seconds)
        gw.access_log.log(self.ident, ex.method, ex.host, ex.path, ex.rule, ex.status,
                          ex.upstream_seconds)
        if not can_reuse:
            ex.close_after = True
        if ex.expect_continue and not ex.request_done:  # see _unsent_body_means_close
            ex.close_after = True
        self._exchange_done(ex)

    @staticmethod
    def _unsent_body_means_close(ex: Exchange) -> None:
        # Answered before the body arrived, to a client waiting for "100 Continue": it will not
        # send the body now, so the stream can't be resynchronised (RFC 9110 §10.1.1). Close.
        # Other clients send their body anyway; it is read and dropped, keeping the connection.
        if ex.expect_continue and not ex.request_done:
            ex.close_after = True

    def stalled(self, now: float, head_timeout: float, body_timeout: float) -> str | None:
        """'head' or 'body' if the client stopped mid-request for too long, else None."""
        if self.closing or self._paused or self.spliced is not None:
            return None  # while we do not read, silence is not the client's
        if self.head_since and now - self.head_since > head_timeout:
            return "head"
        if self.parsing is not None and now - self.last_active > body_timeout:
            return "body"
        return None

    def client_stalled(self, phase: str) -> None:
        """The client stopped sending its request: 408 if nothing else is being answered on
        this connection, then close; the upstream connection of a half-sent body goes too."""
        self.gw.metrics.client_stalled(phase)
        ex, current = self.parsing, self.current
        if current is not None and current.upstream is not None and current is ex:
            current.upstream.detach()
            current.upstream = None
        if current is not None and current.response_started:
            self.abort()  # a response is half-written: only cutting the stream is honest
            return
        if current is None or current is ex:
            self.write(problem_response(408, "request_timeout", close=True))
            method, host, path = (ex.method, ex.host, ex.path) if ex is not None else ("-", "", "")
            self.gw.access_log.log(self.ident, method, host, path, "-", 408, None)
            if ex is not None:
                ex.response_finished = True
        self.close()

    def start_splice(self, ex: Exchange, rest: bytes) -> None:
        """The upstream switched protocols: from now on bytes flow both ways untouched."""
        up = ex.upstream
        assert up is not None and up.transport is not None
        self.spliced, self.ws_wait = up, None
        self.gw.access_log.log(self.ident, ex.method, ex.host, ex.path, ex.rule, 101,
                               ex.upstream_seconds)
        if ex.upstream_seconds is not None:
            self.gw.metrics.latency(ex.upstream_seconds)
        if rest:
            self.write(rest)
        for chunk in ex.ws_early:
            up.transport.write(chunk)
        ex.ws_early = []
        self._resume(PAUSE_UPGRADE)
