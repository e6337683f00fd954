"""The gateway listener: shared state for its connections, housekeeping, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

from gateway.accesslog import AccessLog
from gateway.authz import Authorizer, RevocationView
from gateway.config import GatewayConfig
from gateway.http1 import REQUEST_DROP
from gateway.identity import IdentityCache
from gateway.metrics import Metrics
from gateway.proxy import READ_BUFFER, ClientConn
from gateway.upstream import UpstreamPool

__all__ = ["Gateway"]

log = logging.getLogger("nodetrust.gateway")
TICK_SECONDS = 0.5


class Gateway:
    """Build inside a running loop; `await start(ctx)`, later `await stop()`."""

    def __init__(self, cfg: GatewayConfig, *, authz: Authorizer, revocation: RevocationView,
                 metrics: Metrics, access_log: AccessLog,
                 clock: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        self.authz, self.revocation = authz, revocation
        self.metrics, self.access_log = metrics, access_log
        self.clock, self.mono = clock, mono  # injectable: tests move time, not wait for it
        self.drop_headers = REQUEST_DROP | {h.encode("latin-1") for h in cfg.strip_headers}
        self.upstream_authority = f"{cfg.upstream_host}:{cfg.upstream_port}".encode()
        self.identities = IdentityCache()
        self.pool = UpstreamPool(self, cfg.upstream_host, cfg.upstream_port)
        self.connections: set[ClientConn] = set()
        self.read_buffer = memoryview(bytearray(READ_BUFFER))  # every ClientConn reads into it
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._all_closed = asyncio.Event()
        # The tick also enforces response_timeout: run it often enough for short timeouts.
        self._tick_seconds = min(TICK_SECONDS, max(cfg.response_timeout / 4, 0.01))

    async def start(self, ssl_context: ssl.SSLContext, *, reuse_port: bool = False) -> None:
        self._server = await self.loop.create_server(
            lambda: ClientConn(self), self.cfg.listen_host, self.cfg.listen_port,
            ssl=ssl_context, reuse_port=reuse_port, backlog=2048,
            ssl_handshake_timeout=self.cfg.handshake_timeout)
        self.tick()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def connection_opened(self, conn: ClientConn) -> None:
        self.connections.add(conn)
        self._all_closed.clear()

    def connection_closed(self, conn: ClientConn) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._all_closed.set()

    def tick(self) -> None:
        """Housekeeping, twice a second: idle timeouts, long streams of revoked nodes, gauges."""
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        now = self.loop.time()
        wall = self.clock()
        rev = self.revocation
        cfg = self.cfg
        for conn in list(self.connections):
            stalled = conn.stalled(now, cfg.client_header_timeout, cfg.client_body_timeout)
            if stalled is not None:
                conn.client_stalled(stalled)
                continue
            ident = conn.ident
            ex = conn.current
            if ex is not None and ex.deadline and now >= ex.deadline and ex.upstream is not None:
                ex.upstream.timed_out()  # 504: no response head within response_timeout
            if conn.busy:
                # A WebSocket or a long download is one request: the per-request check ran at
                # its start, so cut it here once the certificate expires or is revoked.
                if ident is not None and (not ident.not_before <= wall <= ident.not_after
                                          or rev.is_revoked(ident.serial)):
                    log.info("closing busy connection of node %s: certificate no longer valid",
                             ident.node_id)
                    conn.abort()
            elif now - conn.last_active > self.cfg.idle_timeout or self.stopping:
                conn.close()
        self.pool.sweep(now, self.cfg.upstream_idle_timeout)
        m = self.metrics
        m.set("heartbeat", wall)
        mono = self.mono()
        m.set("fresh", 1.0 if rev.is_fresh(mono) else 0.0)
        age = getattr(rev, "age", None)  # part of the feed's state, not of the minimal view
        m.set("feed_age", float(age(mono)) if callable(age) else 0.0)
        m.set("feed_lag", float(getattr(rev, "lag_seconds", 0.0)))
        m.set("connections", float(len(self.connections)))
        self._tick_handle = None if self._server is None else \
            self.loop.call_later(self._tick_seconds, self.tick)

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Stop accepting, let in-flight exchanges finish (bounded), then close everything."""
        self.stopping = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self.connections):
            if not conn.busy:
                conn.close()
        if self.connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), drain_seconds)
            except TimeoutError:
                log.warning("aborting %d connections still busy after %.0fs",
                            len(self.connections), drain_seconds)
        for conn in list(self.connections):
            conn.abort()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        self.pool.close()
        self.access_log.flush()
        if server is not None:
            await server.wait_closed()
