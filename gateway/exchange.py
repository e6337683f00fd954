"""One request/response pair as it crosses the gateway (shared by both protocol sides)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.proxy import ClientConn
    from gateway.upstream import UpstreamConn

__all__ = ["Exchange"]


# Why a client transport is not being read (a bit each; reading resumes when all clear).
PAUSE_PIPELINE, PAUSE_UPSTREAM, PAUSE_PENDING, PAUSE_UPGRADE = 1, 2, 4, 8


class Exchange:
    """One request/response pair."""

    __slots__ = (
        "abandoned",
        "chunked_request",
        "client",
        "close_after",
        "connecting",
        "deadline",
        "expect_continue",
        "head",
        "host",
        "http10",
        "keep_alive",
        "method",
        "path",
        "pending",
        "pending_bytes",
        "refusal",
        "request_done",
        "response_finished",
        "response_started",
        "retryable",
        "rule",
        "status",
        "t_sent",
        "upstream",
        "upstream_seconds",
        "websocket",
        "ws_early",
    )

    def __init__(self, client: ClientConn, method: str, http10: bool, keep_alive: bool) -> None:
        self.client = client
        self.method, self.http10, self.keep_alive = method, http10, keep_alive
        self.host = self.path = ""
        self.rule = "-"
        self.head = b""
        self.refusal: tuple[int, str] | None = None
        self.websocket = self.chunked_request = self.close_after = False
        self.request_done = self.response_started = self.response_finished = False
        self.abandoned = False
        self.expect_continue = False  # the client may hold its body until it hears 100
        self.retryable = False
        self.pending: list[bytes] | None = None
        self.pending_bytes = 0
        self.ws_early: list[bytes] = []
        self.upstream: UpstreamConn | None = None
        self.connecting: asyncio.Task[tuple[asyncio.Transport, UpstreamConn]] | None = None
        self.deadline = 0.0  # loop time by which the upstream must answer; 0: not waiting
        self.status = 0
        self.t_sent = 0.0
        self.upstream_seconds: float | None = None
