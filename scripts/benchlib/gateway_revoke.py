"""Revocation-to-refusal latency: how long a revoked node keeps its open connection.

Per try: enroll a node over ACME (http-01, the bench's responder) so the server knows its
certificate, open ONE TLS connection to the system under test with it and get a 200, then send
ACME revokeCert and keep requesting on that same connection (every `interval`) until it answers
403. Measured from the moment revokeCert is sent (conservative: includes the ACME round trip
and the server's commit) to the 403 arriving. A try that sees no 403 within `budget` reports
"never" (what nginx does: it checked the certificate once, at the handshake).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .jws import AccountKey, b64u
from .responder import Http01Responder

JOSE = {"Content-Type": "application/jose+json"}


class ProbeError(RuntimeError):
    pass


@dataclass
class Node:
    name: str
    cert_path: Path
    key_path: Path
    der: bytes


class Acme:
    """Just enough ACME for the probe: account, http-01 order, revokeCert."""

    def __init__(self, base_url: str, ca: Path, responder: Http01Responder) -> None:
        self.base, self.ca, self.responder = base_url, ca, responder
        self.key = AccountKey()
        self.kid: str | None = None
        self.nonce: str | None = None
        self.dir: dict[str, Any] = {}
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                             timeout=aiohttp.ClientTimeout(total=15))
        async with self.session.get(f"{self.base}/acme/directory") as r:
            self.dir = await r.json()
        _, headers = await self.post(self.dir["newAccount"], {"termsOfServiceAgreed": True})
        self.kid = headers["Location"]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def post(self, url: str, payload: dict[str, Any] | None,
                   accept: str | None = None) -> tuple[bytes, Any]:
        assert self.session is not None
        for _ in range(3):
            if self.nonce is None:
                async with self.session.head(self.dir["newNonce"]) as r:
                    self.nonce = r.headers["Replay-Nonce"]
            body = self.key.sign(url, self.nonce, payload, self.kid)
            self.nonce = None
            headers = JOSE if accept is None else {**JOSE, "Accept": accept}
            async with self.session.post(url, data=body, headers=headers) as r:
                data = await r.read()
                self.nonce = r.headers.get("Replay-Nonce")
                if r.status < 400:
                    return data, r.headers
                if b"badNonce" in data:
                    continue
                raise ProbeError(f"{url}: HTTP {r.status}: {data[:300]!r}")
        raise ProbeError(f"{url}: badNonce three times")

    async def _until(self, url: str, want: str) -> dict[str, Any]:
        deadline = time.monotonic() + 15
        while True:
            obj = json.loads((await self.post(url, None))[0])
            if obj.get("status") == want:
                return obj
            if obj.get("status") == "invalid" or time.monotonic() > deadline:
                raise ProbeError(f"{url}: {json.dumps(obj)[:300]}")
            await asyncio.sleep(0.02)

    async def enroll(self, name: str, out: Path) -> Node:
        data, headers = await self.post(self.dir["newOrder"],
                                        {"identifiers": [{"type": "dns", "value": name}]})
        order, order_url = json.loads(data), headers["Location"]
        for authz_url in order["authorizations"]:
            authz = json.loads((await self.post(authz_url, None))[0])
            if authz["status"] == "valid":
                continue
            chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
            self.responder.add(chall["token"], self.key.key_authorization(chall["token"]))
            try:
                await self.post(chall["url"], {})
                await self._until(authz_url, "valid")
            finally:
                self.responder.remove(chall["token"])
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
               .sign(key, hashes.SHA256()))
        await self.post(order["finalize"],
                        {"csr": b64u(csr.public_bytes(serialization.Encoding.DER))})
        order = await self._until(order_url, "valid")
        pem, _ = await self.post(order["certificate"], None,
                                 accept="application/pem-certificate-chain")
        out.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = out / f"{name}.pem", out / f"{name}.key"
        cert_path.write_bytes(pem)
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        return Node(name, cert_path, key_path, der)

    async def revoke(self, node: Node, reason: int = 1) -> None:
        await self.post(self.dir["revokeCert"], {
            "certificate": base64.urlsafe_b64encode(node.der).rstrip(b"=").decode(),
            "reason": reason})


class Conn:
    """One TLS connection speaking HTTP/1.1 keep-alive by hand (never reconnects)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext) -> Conn:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                             server_hostname="127.0.0.1")
        return cls(r, w)

    async def get(self) -> int:
        self.writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


@dataclass
class Probe:
    target: str
    latencies_ms: list[float]   # revokeCert sent -> 403 on the same connection
    never: int                  # tries with no 403 within the budget
    budget_s: float


async def measure(target: str, port: int, acme: Acme, ca: Path, workdir: Path, *, tries: int,
                  interval: float, budget: float, log: Any, names: str) -> Probe:
    lat: list[float] = []
    never = 0
    for i in range(tries):
        node = await acme.enroll(f"{names}-{i}.bench.test", workdir / "probe")
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(node.cert_path), str(node.key_path))
        conn = await Conn.open(port, ctx)
        try:
            first = await conn.get()
            if first != 200:
                raise ProbeError(f"{target}: first request with a fresh certificate got {first}")
            t0 = time.monotonic()
            revoking = asyncio.create_task(acme.revoke(node))
            refused_at = None
            while time.monotonic() - t0 < budget:
                status = await conn.get()
                if status == 403:
                    refused_at = time.monotonic()
                    break
                await asyncio.sleep(interval)
            await revoking
        finally:
            await conn.close()
        if refused_at is None:
            never += 1
        else:
            lat.append((refused_at - t0) * 1000)
        if (i + 1) % 5 == 0 or i + 1 == tries:
            log(f"  {target}: revocation probe {i + 1}/{tries}")
    return Probe(target, lat, never, budget)
