"""Gateway test harness: certificates from a real CertificateAuthority (the class the server
uses), a small aiohttp upstream, a Gateway whose clocks tests move instead of waiting, and a
blocking HTTPS client with a client certificate (run in a thread). Fixtures: tests/gateway."""
from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.accesslog import AccessLog
from gateway.authz import Authorizer, compile_policy
from gateway.config import GatewayConfig
from gateway.metrics import Metrics, SharedBlock
from gateway.revocation import RevocationState
from gateway.server import Gateway
from gateway.tls import server_context
from server import pki_files
from server.ca import CertificateAuthority

TRUST_DOMAIN = "nodetrust.test"
MIB = 1 << 20


# --- certificates -------------------------------------------------------------------------------

@dataclass
class ClientCert:
    cert: Path      # leaf + intermediate (what an ACME client saves as fullchain)
    key: Path
    serial: int

    def context(self, trust: Path) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(trust))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


class Pki:
    def __init__(self, root: Path, common_name: str = "nodetrust") -> None:
        self.dir = root
        self.ca = CertificateAuthority.load_or_create(root / "ca", common_name=common_name)
        self._n = 0

    @property
    def root_pem(self) -> Path:
        return self.ca.root_path

    def client(self, node_id: str = "node-1", *, spiffe: str | None = None,
               dns: list[str] | None = None, permanent_identifiers: list[str] | None = None,
               not_before: datetime | None = None, not_after: datetime | None = None
               ) -> ClientCert:
        now = datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        if spiffe is None and not permanent_identifiers:
            spiffe = f"spiffe://{TRUST_DOMAIN}/node/{node_id}"
        issued = self.ca.issue(
            key.public_key(),
            dns_names=dns if dns is not None else [f"{node_id}.nodes.{TRUST_DOMAIN}"],
            uris=[spiffe] if spiffe else [],
            permanent_identifiers=permanent_identifiers or [],
            not_before=not_before or now - timedelta(minutes=1),
            not_after=not_after or now + timedelta(hours=24),
        )
        self._n += 1
        cert_path, key_path = self.dir / f"client{self._n}.pem", self.dir / f"client{self._n}.key"
        cert_path.write_bytes(issued.chain_pem)
        key_path.write_bytes(pki_files.private_key_pem(key))
        return ClientCert(cert_path, key_path, issued.serial)


# --- upstream -----------------------------------------------------------------------------------

@dataclass
class Upstream:
    server: TestServer | None = None
    received: dict[str, Any] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)   # unblocks /slow
    upload_first_mib: threading.Event = field(default_factory=threading.Event)
    download_gate: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port


def pattern(size: int) -> Iterator[bytes]:
    """Deterministic bytes generated on the fly (never the whole body in memory)."""
    block = hashlib.sha256(b"nodetrust").digest() * (MIB // 32)
    sent = 0
    while sent < size:
        chunk = block[: min(MIB, size - sent)]
        sent += len(chunk)
        yield chunk


def pattern_sha256(size: int) -> str:
    h = hashlib.sha256()
    for chunk in pattern(size):
        h.update(chunk)
    return h.hexdigest()


def make_upstream_app(up: Upstream) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({
            "method": request.method, "path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()], "body_len": len(body)})

    async def upload(request: web.Request) -> web.Response:
        h, n = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            h.update(chunk)
            n += len(chunk)
            if n >= MIB:
                up.upload_first_mib.set()
        return web.json_response({"sha256": h.hexdigest(), "size": n})

    async def download(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.query.get("length"):
            resp.content_length = size
        await resp.prepare(request)
        for i, chunk in enumerate(pattern(size)):
            await resp.write(chunk)
            if i == 0 and request.query.get("gated"):
                await up.download_gate.wait()  # the client must see byte 1 before we go on
        await resp.write_eof()
        return resp

    async def slow(_: web.Request) -> web.Response:
        await up.release.wait()
        return web.Response(text="late")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        up.received["ws_headers"] = dict(request.headers)
        async for msg in sock:
            await sock.send_str("echo:" + msg.data)
        return sock

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/echo{tail:.*}", echo)
    app.router.add_route("*", "/admin{tail:.*}", echo)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_get("/slow", slow)
    app.router.add_get("/ws", ws)
    return app


# --- the gateway --------------------------------------------------------------------------------

DEFAULT_POLICY: dict[str, Any] = {"routes": [
    {"name": "admin", "prefix": "/admin", "allow_labels": ["ops"]},
    {"name": "nodes", "prefix": "/", "allow_spiffe": [f"spiffe://{TRUST_DOMAIN}/node/*"]},
]}


class FakeClocks:
    """Wall clock (certificate validity) and monotonic clock (feed freshness), both movable."""

    def __init__(self) -> None:
        self.wall_offset = 0.0
        self.mono_offset = 0.0

    def wall(self) -> float:
        return time.time() + self.wall_offset

    def mono(self) -> float:
        return time.monotonic() + self.mono_offset


@dataclass
class Harness:
    gw: Gateway
    state: RevocationState
    authz: Authorizer
    clocks: FakeClocks
    block: SharedBlock
    log_path: Path
    trust: Path
    port: int

    def url(self, path: str = "/") -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def log_lines(self) -> list[dict[str, Any]]:
        self.gw.access_log.flush()
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_gateway(tmp_path: Path, pki: Pki, server_tls: tuple[Path, Path],
                        upstream_port: int, policy: dict[str, Any] | None = None,
                        **overrides: Any) -> Harness:
    cfg = replace(GatewayConfig(source=tmp_path / "gateway.toml"), listen_port=0,
                  upstream_port=upstream_port, cert=server_tls[0], key=server_tls[1],
                  client_ca=pki.root_pem, access_log=str(tmp_path / "access.log"),
                  metrics_listen=None, **overrides)
    clocks = FakeClocks()
    state = RevocationState(max_staleness=30.0)
    state.touch(clocks.mono())
    authz = Authorizer(compile_policy(policy or DEFAULT_POLICY, "test-policy"))
    block = SharedBlock(1)
    gw = Gateway(cfg, authz=authz, revocation=state, metrics=Metrics(block),
                 access_log=AccessLog(cfg.access_log), clock=clocks.wall, mono=clocks.mono)
    await gw.start(server_context(cfg.cert, cfg.key, cfg.client_ca))
    return Harness(gw, state, authz, clocks, block, tmp_path / "access.log", pki.root_pem,
                   gw.port)


# --- a blocking HTTPS client (run in a thread) ---------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def upstream_headers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for k, v in self.json()["headers"]:
            out.setdefault(k.lower(), []).append(v)
        return out


class Client:
    """One keep-alive HTTPS connection with a client certificate (http.client, in a thread)."""

    def __init__(self, h: Harness | int, cert: ClientCert | None, *,
                 ctx: ssl.SSLContext | None = None) -> None:
        """`h`: the harness, or a bare port (then `ctx` is required)."""
        if isinstance(h, int):
            assert ctx is not None
            port = h
        else:
            port = h.port
            if ctx is None:
                ctx = cert.context(h.trust) if cert else \
                    ssl.create_default_context(cafile=str(h.trust))
        self.ctx = ctx
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
        self.last_port = 0

    def _request(self, method: str, path: str, body: Any, headers: dict[str, str]) -> Reply:
        chunked = headers.get("Transfer-Encoding") == "chunked"
        self.conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
        assert self.conn.sock is not None
        self.last_port = int(self.conn.sock.getsockname()[1])  # which TCP connection served it
        resp = self.conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)

    async def request(self, method: str, path: str, body: Any = None,
                      headers: dict[str, str] | None = None) -> Reply:
        return await asyncio.to_thread(self._request, method, path, body, headers or {})

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return await self.request("GET", path, None, headers)

    def close(self) -> None:
        self.conn.close()
