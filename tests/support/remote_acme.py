"""Enroll and revoke over real HTTPS against a running nodetrust server (in-process with
TLS, or the `nodetrust-server` subprocess), with a real http-01 responder on loopback.

`AcmeTestClient` only needs `.get/.head/.post` on paths, which an aiohttp ClientSession
with `base_url` provides, so the same explicit client drives a remote server. Nothing here
sleeps: waiting for validation is a POST-as-GET loop under a deadline.
"""
from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from support.acmeclient import AcmeTestClient, Key, Reply, b64u, csr_der, key_from_private

DEADLINE = 15.0  # seconds for one order to validate / finalize


class Http01Responder:
    """Serves /.well-known/acme-challenge/<token> on 127.0.0.1:port for provisioned tokens."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.tokens: dict[str, str] = {}
        self._server: TestServer | None = None

    async def start(self) -> int:
        app = web.Application()

        async def answer(request: web.Request) -> web.Response:
            body = self.tokens.get(request.match_info["token"])
            return web.Response(text=body) if body else web.Response(status=404)

        app.router.add_get("/.well-known/acme-challenge/{token}", answer)
        self._server = TestServer(app, host="127.0.0.1", port=self.port or None)
        await self._server.start_server()
        assert self._server.port is not None
        self.port = self._server.port
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()


@dataclass
class Enrolled:
    cert: x509.Certificate
    key: Any  # the certificate's private key
    chain_pem: bytes

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def write(self, directory: Path) -> tuple[Path, Path]:
        """cert.pem (the chain) and key.pem, for TLS clients."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / "cert.pem", directory / "key.pem"
        cert_path.write_bytes(self.chain_pem)
        key_path.write_bytes(self.key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
        return cert_path, key_path


class RemoteAcme:
    """One account on a running server: `async with RemoteAcme(url, ca, responder) as acme`."""

    def __init__(self, base_url: str, ca_file: Path, responder: Http01Responder) -> None:
        self.base_url, self.ca_file, self.responder = base_url.rstrip("/"), ca_file, responder
        self.session: aiohttp.ClientSession | None = None
        self.client: AcmeTestClient | None = None

    async def __aenter__(self) -> RemoteAcme:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        self.session = aiohttp.ClientSession(base_url=self.base_url, trust_env=False,
                                             connector=aiohttp.TCPConnector(ssl=ctx))
        self.client = await AcmeTestClient(self.session, self.base_url, key=Key()).start()
        self.client.retry_bad_nonce = True
        r = await self.client.new_account()
        assert r.status == 201, r.body
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.session is not None:
            await self.session.close()

    @property
    def c(self) -> AcmeTestClient:
        assert self.client is not None
        return self.client

    async def _until(self, url: str, *states: str) -> Reply:
        deadline = time.monotonic() + DEADLINE
        while True:
            r = await self.c.post(url)
            assert r.status == 200, r.body
            if r.json["status"] in states:
                return r
            assert r.json["status"] in ("pending", "processing"), r.json
            assert time.monotonic() < deadline, f"{url} still {r.json['status']}"

    async def enroll(self, name: str) -> Enrolled:
        order = await self.c.new_order(name)
        assert order.status == 201, order.body
        for authz_url in order.json["authorizations"]:
            authz = (await self.c.post(authz_url)).json
            if authz["status"] == "valid":
                continue
            ch = next(x for x in authz["challenges"] if x["type"] == "http-01")
            self.responder.tokens[ch["token"]] = f"{ch['token']}.{self.c.key.thumbprint}"
            r = await self.c.post(ch["url"], {})
            assert r.status == 200, r.body
        ready = await self._until(order.location, "ready")
        der, key = csr_der([name])
        fin = await self.c.post(ready.json["finalize"], {"csr": b64u(der)})
        assert fin.status == 200, fin.body
        done = await self._until(order.location, "valid")
        pem = await self.c.post(done.json["certificate"])
        assert pem.status == 200, pem.body
        return Enrolled(cert=x509.load_pem_x509_certificate(pem.body), key=key, chain_pem=pem.body)

    async def revoke(self, node: Enrolled, reason: int = 0) -> None:
        """revokeCert signed by the certificate's own key (works from any account)."""
        r = await self.c.post(self.c.url("revokeCert"),
                              {"certificate": b64u(node.der), "reason": reason},
                              key=key_from_private(node.key), use_jwk=True, kid=None)
        assert r.status == 200, r.body
