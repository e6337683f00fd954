"""Who gets in: the handshake (operational CA only) and the per-request checks on open
connections (expiry, revocation, feed freshness)."""
from __future__ import annotations

import asyncio
import http.client
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

from support.gateway_harness import Client, ClientCert, Harness, Pki

HANDSHAKE_REFUSED = (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)


def _request_over_tls(h: Harness, ctx: ssl.SSLContext) -> bytes:
    """Handshake and one request; with TLS 1.3 the server's verdict on the client certificate
    arrives after the client's handshake completes, so it surfaces on the first read."""
    with socket.create_connection(("127.0.0.1", h.port), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


async def _assert_handshake_refused(h: Harness, ctx: ssl.SSLContext) -> None:
    try:
        out = await asyncio.to_thread(_request_over_tls, h, ctx)
    except HANDSHAKE_REFUSED:
        return
    assert out == b"", f"expected the handshake to fail, got {out[:80]!r}"


async def test_no_client_certificate_is_refused_at_the_handshake(gateway: Harness) -> None:
    await _assert_handshake_refused(gateway, ssl.create_default_context(cafile=str(gateway.trust)))


async def test_certificate_from_another_ca_is_refused(gateway: Harness, tmp_path: Path) -> None:
    # Same names as ours ("nodetrust Root CA"), different keys: only the key chain counts.
    impostor = Pki(tmp_path / "impostor").client("node-1")
    await _assert_handshake_refused(gateway, impostor.context(gateway.trust))


async def test_bootstrap_certificate_from_a_manufacturer_root_is_refused(
        gateway: Harness, tmp_path: Path) -> None:
    maker = Pki(tmp_path / "maker", common_name="Example Devices Manufacturing")
    idevid = maker.client("dev", spiffe="", dns=[], permanent_identifiers=["SN-0042"])
    await _assert_handshake_refused(gateway, idevid.context(gateway.trust))


async def test_expired_certificate_is_refused(gateway: Harness, pki: Pki) -> None:
    past = datetime.now(UTC) - timedelta(days=2)
    expired = pki.client("old", not_before=past, not_after=past + timedelta(hours=1))
    await _assert_handshake_refused(gateway, expired.context(gateway.trust))


async def test_certificate_expiring_during_a_keepalive_connection_is_refused_from_then_on(
        gateway: Harness, pki: Pki) -> None:
    short = pki.client("short", not_after=datetime.now(UTC) + timedelta(hours=1))
    c = Client(gateway, short)
    assert (await c.get("/echo")).status == 200
    port = c.last_port
    gateway.clocks.wall_offset = 3600 + 1  # one second past notAfter, same connection
    r = await c.get("/echo")
    assert c.last_port == port
    assert r.status == 403 and r.json()["reason"] == "expired"
    assert r.headers.get("connection") == "close"
    c.close()


async def test_revocation_refuses_the_same_keepalive_connection_and_new_ones(
        gateway: Harness, pki: Pki) -> None:
    doomed = pki.client("doomed")
    c = Client(gateway, doomed)
    assert (await c.get("/echo")).status == 200
    port = c.last_port
    gateway.state.mark_revoked([doomed.serial], seq=1, now=gateway.clocks.mono())
    r = await c.get("/echo")
    assert c.last_port == port, "the check must hit the open connection, not a new one"
    assert r.status == 403 and r.json()["reason"] == "revoked"
    assert r.headers["content-type"] == "application/problem+json"
    c.close()
    fresh = Client(gateway, doomed)
    r = await fresh.get("/echo")
    assert r.status == 403 and r.json()["reason"] == "revoked"
    fresh.close()
    line = [ln for ln in gateway.log_lines() if ln["serial"] == f"{doomed.serial:x}"][-1]
    assert line["status"] == 403 and line["upstream_ms"] is None
    assert gateway.block.total("reason_revoked") == 2


async def test_stale_revocation_state_refuses_with_503_then_recovers(
        gateway: Harness, node: ClientCert) -> None:
    c = Client(gateway, node)
    assert (await c.get("/echo")).status == 200
    gateway.clocks.mono_offset = 31  # the feed has been silent longer than max_staleness
    r = await c.get("/echo")
    assert r.status == 503 and r.json()["reason"] == "stale"
    assert (await c.get("/echo")).status == 503  # fail closed, and the connection stays open
    gateway.state.touch(gateway.clocks.mono())   # the feed answers again
    assert (await c.get("/echo")).status == 200
    c.close()


async def test_tls_resumption_still_runs_the_per_request_check(
        gateway: Harness, pki: Pki) -> None:
    node = pki.client("resumer")
    ctx = node.context(gateway.trust)

    def two_connections() -> tuple[bool, bytes]:
        session = None
        out = b""
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", gateway.port)) as raw, \
                    ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as s:
                s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                out = b""
                while chunk := s.recv(65536):
                    out += chunk
                reused = s.session_reused
                session = s.session  # TLS 1.3 tickets arrive with the first response
        return reused, out

    reused, out = await asyncio.to_thread(two_connections)
    assert reused and out.startswith(b"HTTP/1.1 200")
    gateway.state.mark_revoked([node.serial], seq=2, now=gateway.clocks.mono())
    reused, out = await asyncio.to_thread(two_connections)
    assert reused, "a resumed session skips the handshake..."
    assert out.startswith(b"HTTP/1.1 403"), "...but never the per-request check"
