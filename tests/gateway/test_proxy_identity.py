"""Requests through the gateway: identity forwarding, header hygiene, route policy."""
from __future__ import annotations

import asyncio
import re
import socket
import ssl

from support.gateway_harness import TRUST_DOMAIN, Client, ClientCert, Harness, Pki, Upstream

from gateway.identity import parse_identity, xfcc_value


async def test_allowed_request_carries_gateway_identity_and_drops_spoofed_headers(
        gateway: Harness, node: ClientCert, pki: Pki) -> None:
    c = Client(gateway, node)
    spoofed = {
        "X-Forwarded-Client-Cert": "Hash=00;URI=spiffe://evil/node/admin",
        "X-Nodetrust-Node-Id": "admin",
        "X-NODETRUST-Spiffe-Id": "spiffe://evil/node/admin",
        "X-Nodetrust-Anything": "x",
        "X-Forwarded-For": "10.9.9.9",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "Connection": "keep-alive, X-Private-Hop",
        "X-Private-Hop": "must not pass",
        "TE": "trailers",
        "X-Kept": "yes",
    }
    r = await c.get("/echo/hello?q=1", headers=spoofed)
    assert r.status == 200, r.body
    seen = r.upstream_headers()
    ident = parse_identity(_leaf_der(node))
    assert seen["x-forwarded-client-cert"] == [xfcc_value(ident)]
    assert seen["x-forwarded-client-cert"][0].startswith(f"Hash={ident.sha256};Subject=\"\";URI="
                                                         f"spiffe://{TRUST_DOMAIN}/node/node-1;")
    assert seen["x-nodetrust-node-id"] == ["node-1"]
    assert seen["x-nodetrust-spiffe-id"] == [f"spiffe://{TRUST_DOMAIN}/node/node-1"]
    assert "x-nodetrust-anything" not in seen
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    for hop in ("proxy-authorization", "x-private-hop", "te", "connection"):
        assert hop not in seen, hop
    assert seen["x-kept"] == ["yes"]
    assert r.json()["path"] == "/echo/hello?q=1"
    line = gateway.log_lines()[-1]
    assert line["node"] == "node-1" and line["serial"] == f"{node.serial:x}"
    assert line["spiffe"] == f"spiffe://{TRUST_DOMAIN}/node/node-1"
    assert line["rule"] == "nodes" and line["status"] == 200 and line["upstream_ms"] >= 0
    c.close()


def _leaf_der(cert: ClientCert) -> bytes:
    pem = cert.cert.read_text()
    first = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    return ssl.PEM_cert_to_DER_cert(first)


async def test_route_denied_names_the_rule_and_default_denies(
        gateway: Harness, node: ClientCert, pki: Pki) -> None:
    c = Client(gateway, node)
    r = await c.get("/admin/users")
    assert r.status == 403
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["reason"] == "policy" and r.json()["rule"] == "admin"
    # The same connection is still usable: a policy refusal is not a reason to hang up.
    assert (await c.get("/echo")).status == 200
    # Labels (the hook the feed fills) open the admin rule for this node only.
    gateway.authz.set_node_labels({"node-1": ["ops"]})
    assert (await c.get("/admin/users")).status == 200
    # A node outside the trust domain's node/* namespace matches no allow list.
    stranger = pki.client("svc", spiffe="spiffe://other.test/svc/x", dns=["svc.other.test"])
    s = Client(gateway, stranger)
    r = await s.get("/echo")
    assert r.status == 403 and r.json()["rule"] == "nodes"
    s.close()
    c.close()


async def test_default_deny_when_no_rule_matches(tmp_path, pki, server_tls, upstream: Upstream,
                                                 node: ClientCert) -> None:
    from support.gateway_harness import start_gateway
    h = await start_gateway(tmp_path, pki, server_tls, upstream.port, policy={"routes": [
        {"name": "only-echo", "prefix": "/echo", "methods": ["GET"],
         "allow_dns": ["*.nodes.nodetrust.test"]}]})
    try:
        c = Client(h, node)
        assert (await c.get("/echo")).status == 200
        r = await c.request("POST", "/echo", b"x")
        assert r.status == 403 and r.json() | {} == r.json()
        assert r.json()["reason"] == "no_route" and r.json()["rule"] == "default"
        c.close()
    finally:
        await h.gw.stop(drain_seconds=1)


async def test_path_tricks_cannot_reach_a_denied_route(gateway: Harness, node: ClientCert) -> None:
    c = Client(gateway, node)
    for path in ("/echo/../admin/x", "/%61dmin/x", "//admin/x", "/./admin"):
        r = await c.get(path)
        assert r.status == 403 and r.json()["rule"] == "admin", path
    c.close()
    # Encoded slashes are refused outright: upstream routers disagree on what they mean.
    c = Client(gateway, node)
    r = await c.get("/admin%2Fx")
    assert r.status == 400
    c.close()


async def test_pipelined_requests_are_answered_in_order(gateway: Harness, node: ClientCert) -> None:
    ctx = node.context(gateway.trust)

    def run() -> bytes:
        with socket.create_connection(("127.0.0.1", gateway.port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"GET /echo/1 HTTP/1.1\r\nHost: a\r\n\r\n"
                      b"GET /admin/2 HTTP/1.1\r\nHost: a\r\n\r\n"
                      b"GET /echo/3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    out = await asyncio.to_thread(run)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", out)
    assert statuses == [b"200", b"403", b"200"]
    assert out.index(b'"/echo/1"') < out.index(b'"rule": "admin"') < out.index(b'"/echo/3"')


async def test_bad_requests_get_400(gateway: Harness, node: ClientCert) -> None:
    ctx = node.context(gateway.trust)

    def run(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", gateway.port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(request)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    no_host = await asyncio.to_thread(run, b"GET /echo HTTP/1.1\r\n\r\n")
    assert no_host.startswith(b"HTTP/1.1 400")
    smuggle = await asyncio.to_thread(
        run, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert smuggle.startswith(b"HTTP/1.1 400")
    big = await asyncio.to_thread(
        run, b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 431")
    connect = await asyncio.to_thread(run, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n")
    assert connect.startswith(b"HTTP/1.1 405")


async def test_configured_identity_headers_are_stripped_too(
        tmp_path, pki, server_tls, upstream: Upstream, node: ClientCert) -> None:
    from support.gateway_harness import start_gateway
    h = await start_gateway(tmp_path, pki, server_tls, upstream.port,
                            strip_headers=("x-internal-role",))
    try:
        c = Client(h, node)
        r = await c.get("/echo", headers={"X-Internal-Role": "admin", "X-Other": "1"})
        seen = r.upstream_headers()
        assert "x-internal-role" not in seen and seen["x-other"] == ["1"]
        c.close()
    finally:
        await h.gw.stop(drain_seconds=1)


async def test_refused_request_bodies_keep_the_stream_in_step(
        gateway: Harness, node: ClientCert) -> None:
    ctx = node.context(gateway.trust)

    def run(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", gateway.port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(request)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    # A refused body that the client sends anyway is read and dropped: the next request on the
    # connection is parsed from the right byte.
    out = await asyncio.to_thread(
        run, b"POST /admin/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
             b"GET /echo/next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", out) == [b"403", b"200"]
    assert b'"/echo/next"' in out
    # A client waiting for 100 Continue never sends the body after a refusal: close instead
    # of reading its next request as body bytes.
    out = await asyncio.to_thread(
        run, b"POST /admin/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
             b"Expect: 100-continue\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 403") and b"connection: close" in out
