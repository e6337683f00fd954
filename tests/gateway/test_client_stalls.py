"""A client that stops mid-request (slowloris) is answered 408 and cut off, like nginx's
client_header_timeout / client_body_timeout; one that sends in time is not."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.gateway_harness import Client, ClientCert, Harness, Pki, Upstream, start_gateway

FAILSAFE = 30.0  # seconds; only reached if the stall is never detected (the test then fails)


@pytest.fixture
async def strict(tmp_path: Path, pki: Pki, server_tls: tuple[Path, Path],
                 upstream: Upstream) -> AsyncIterator[Harness]:
    # Zero timeouts: the first housekeeping pass after a half-sent request cuts it.
    h = await start_gateway(tmp_path, pki, server_tls, upstream.port,
                            client_header_timeout=0.0, client_body_timeout=0.0)
    yield h
    await h.gw.stop(drain_seconds=1)
    h.gw.access_log.close()


async def _answer_after_ticks(h: Harness, node: ClientCert, sent: bytes) -> bytes:
    """Send `sent` and no more; run the gateway's housekeeping until the connection ends."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", h.port, ssl=node.context(h.trust), server_hostname="127.0.0.1")
    writer.write(sent)
    await writer.drain()
    received = b""
    deadline = asyncio.get_running_loop().time() + FAILSAFE
    while asyncio.get_running_loop().time() < deadline:
        h.gw.tick()  # what runs twice a second in a real gateway
        try:
            chunk = await asyncio.wait_for(reader.read(65536), timeout=0.05)
        except TimeoutError:
            continue  # the gateway has not read our bytes yet: tick again
        if not chunk:
            break
        received += chunk
    writer.close()
    return received


def _problem(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"connection: close" in head.lower()
    return status, json.loads(body)


async def test_half_sent_head_is_answered_408_and_closed(strict: Harness,
                                                          node: ClientCert) -> None:
    raw = await _answer_after_ticks(strict, node, b"GET /echo HTTP/1.1\r\nHost: api.test\r\nX-A: ")
    status, problem = _problem(raw)
    assert status == 408 and problem["reason"] == "request_timeout"
    assert strict.block.total("stalled_head") == 1
    assert strict.log_lines()[-1]["status"] == 408


async def test_half_sent_body_is_answered_408_and_the_upstream_is_let_go(
        strict: Harness, node: ClientCert, upstream: Upstream) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: api.test\r\nContent-Length: 100\r\n\r\n"
    raw = await _answer_after_ticks(strict, node, head + b"x" * 10)
    status, problem = _problem(raw)
    assert status == 408 and problem["reason"] == "request_timeout"
    assert strict.block.total("stalled_body") == 1
    line = strict.log_lines()[-1]
    assert (line["status"], line["path"]) == (408, "/echo")


async def test_requests_sent_in_time_are_untouched(gateway: Harness, node: ClientCert) -> None:
    # Default timeouts (60 s): housekeeping between and after requests changes nothing.
    c = Client(gateway, node)
    assert (await c.get("/echo")).status == 200
    gateway.gw.tick()
    r = await c.request("POST", "/echo", b"y" * 1000, {"Content-Type": "text/plain"})
    gateway.gw.tick()
    assert r.status == 200
    assert gateway.block.total("stalled_head") == gateway.block.total("stalled_body") == 0
