"""Bodies stream both ways, WebSockets splice, and upstream failures map to 502/504."""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from support.gateway_harness import (
    MIB,
    Client,
    ClientCert,
    Harness,
    Pki,
    Upstream,
    free_port,
    pattern,
    pattern_sha256,
    start_gateway,
)

BIG = 64 * MIB
FAILSAFE = 60  # seconds; only reached if streaming is broken (then the test fails, not hangs)


async def test_large_upload_streams_to_the_upstream_before_it_ends(
        gateway: Harness, node: ClientCert, upstream: Upstream) -> None:
    def body() -> Iterator[bytes]:
        chunks = pattern(BIG)
        yield next(chunks)
        # The upstream must hold the first MiB while 63 MiB are still on the client side:
        # a gateway that buffered the whole body would never get here.
        assert upstream.upload_first_mib.wait(FAILSAFE), "upload not streamed"
        yield from chunks

    c = Client(gateway, node)
    r = await c.request("POST", "/upload", body(), {"Transfer-Encoding": "chunked"})
    assert r.status == 200, r.body
    assert r.json() == {"sha256": pattern_sha256(BIG), "size": BIG}
    # A Content-Length upload on the same connection goes through unchanged too.
    r = await c.request("POST", "/upload", b"".join(pattern(3 * MIB)),
                        {"Content-Length": str(3 * MIB)})
    assert r.json() == {"sha256": pattern_sha256(3 * MIB), "size": 3 * MIB}
    c.close()


async def test_large_download_streams_to_the_client_before_it_ends(
        gateway: Harness, node: ClientCert, upstream: Upstream) -> None:
    loop = asyncio.get_running_loop()
    c = Client(gateway, node)

    def download(query: str) -> tuple[int, str, int, str]:
        c.conn.request("GET", f"/download?size={BIG}{query}")
        resp = c.conn.getresponse()
        h = hashlib.sha256()
        first = resp.read(MIB)
        h.update(first)
        # The upstream is parked after its first MiB until we have it: proof that the
        # gateway forwards as it receives instead of collecting the whole body first.
        loop.call_soon_threadsafe(upstream.download_gate.set)
        n = len(first)
        while chunk := resp.read(MIB):
            h.update(chunk)
            n += len(chunk)
        return resp.status, resp.getheader("transfer-encoding") or "", n, h.hexdigest()

    status, te, n, digest = await asyncio.to_thread(download, "&gated=1")
    assert (status, te, n, digest) == (200, "chunked", BIG, pattern_sha256(BIG))
    # With a Content-Length the body is passed through as is, on the same connection.
    status, te, n, digest = await asyncio.to_thread(download, "&length=1")
    assert (status, te, n, digest) == (200, "", BIG, pattern_sha256(BIG))
    c.close()


async def test_websocket_echo_through_the_gateway(
        gateway: Harness, node: ClientCert, upstream: Upstream) -> None:
    ctx = node.context(gateway.trust)
    async with aiohttp.ClientSession() as session, session.ws_connect(
            gateway.url("/ws"), ssl=ctx, headers={"X-Nodetrust-Node-Id": "spoofed"}) as ws:
        for text in ("hello", "x" * 100_000):
            await ws.send_str(text)
            msg = await ws.receive(timeout=FAILSAFE)
            assert msg.data == "echo:" + text
        seen = {k.lower(): v for k, v in upstream.received["ws_headers"].items()}
        assert seen["x-nodetrust-node-id"] == "node-1"
        assert seen["upgrade"].lower() == "websocket"
    line = gateway.log_lines()[-1]
    assert line["status"] == 101 and line["path"] == "/ws"


async def test_websocket_of_a_revoked_node_is_cut(
        gateway: Harness, pki: Pki, upstream: Upstream) -> None:
    doomed = pki.client("ws-doomed")
    async with aiohttp.ClientSession() as session, session.ws_connect(
            gateway.url("/ws"), ssl=doomed.context(gateway.trust)) as ws:
        await ws.send_str("a")
        assert (await ws.receive(timeout=FAILSAFE)).data == "echo:a"
        gateway.state.mark_revoked([doomed.serial], seq=1, now=gateway.clocks.mono())
        gateway.gw.tick()  # the housekeeping pass that runs twice a second
        msg = await ws.receive(timeout=FAILSAFE)
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR,
                            aiohttp.WSMsgType.CLOSE)


async def test_websocket_to_a_denied_route_is_refused(gateway: Harness, node: ClientCert) -> None:
    async with aiohttp.ClientSession() as session:
        try:
            await session.ws_connect(gateway.url("/admin/ws"), ssl=node.context(gateway.trust))
        except aiohttp.WSServerHandshakeError as e:
            assert e.status == 403
        else:
            raise AssertionError("expected 403")


async def test_upstream_down_is_502(tmp_path: Path, pki: Pki, server_tls: tuple[Path, Path],
                                    node: ClientCert) -> None:
    h = await start_gateway(tmp_path, pki, server_tls, free_port())
    try:
        c = Client(h, node)
        r = await c.get("/echo")
        assert r.status == 502 and r.json()["reason"] == "upstream_unavailable"
        assert r.json()["rule"] == "nodes"
        assert h.block.total("upstream_connect") == 1
        assert (await c.get("/echo")).status == 502  # and the connection survives it
        c.close()
    finally:
        await h.gw.stop(drain_seconds=1)


async def test_slow_upstream_is_504(tmp_path: Path, pki: Pki, server_tls: tuple[Path, Path],
                                    node: ClientCert, upstream: Upstream) -> None:
    h = await start_gateway(tmp_path, pki, server_tls, upstream.port, response_timeout=0.2)
    try:
        c = Client(h, node)
        r = await c.get("/slow")
        assert r.status == 504 and r.json()["reason"] == "upstream_timeout"
        assert h.block.total("upstream_timeout") == 1
        assert (await c.get("/echo")).status == 200  # a fresh upstream connection serves on
        c.close()
    finally:
        await h.gw.stop(drain_seconds=1)


async def test_head_and_expect_continue(gateway: Harness, node: ClientCert) -> None:
    c = Client(gateway, node)
    r = await c.request("HEAD", "/echo")
    assert r.status == 200 and r.body == b""
    r = await c.request("POST", "/echo", b"x" * 10, {"Expect": "100-continue"})
    assert r.status == 200 and r.json()["body_len"] == 10
    assert (await c.get("/echo")).status == 200  # the connection is still in step
    c.close()


async def test_pooled_connection_the_upstream_closed_is_retried(
        gateway: Harness, node: ClientCert, upstream: Upstream) -> None:
    c = Client(gateway, node)
    assert (await c.get("/echo")).status == 200
    assert len(gateway.gw.pool.idle) == 1
    pooled = gateway.gw.pool.idle[0]
    assert pooled.transport is not None
    pooled.transport.pause_reading()  # so the gateway cannot notice the close below in time
    assert upstream.server is not None
    server = upstream.server.runner.server  # type: ignore[union-attr]
    for handler in server.connections:  # the upstream drops its idle keep-alive connection
        assert handler.transport is not None
        handler.transport.abort()
    r = await c.get("/echo")  # lands on the dead pooled connection first, then retries
    assert r.status == 200
    assert pooled.transport is None
    c.close()
