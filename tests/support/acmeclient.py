"""A small, explicit ACME test client: it signs whatever it is told to, so tests can send
both correct requests and every kind of broken one."""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Key:
    """An account (or certificate) key that can sign JWS with its natural algorithm."""

    def __init__(self, kind: str = "ec-p256") -> None:
        self.kind = kind
        if kind == "ec-p256":
            self.priv: Any = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"
        elif kind == "ec-p384":
            self.priv = ec.generate_private_key(ec.SECP384R1())
            self.alg = "ES384"
        elif kind.startswith("rsa-"):
            self.priv = rsa.generate_private_key(65537, int(kind[4:]))
            self.alg = "RS256"
        elif kind == "ed25519":
            self.priv = ed25519.Ed25519PrivateKey.generate()
            self.alg = "EdDSA"
        else:
            raise ValueError(kind)

    @property
    def jwk(self) -> dict[str, str]:
        pub = self.priv.public_key()
        if isinstance(pub, ec.EllipticCurvePublicKey):
            n = pub.public_numbers()
            size = (pub.curve.key_size + 7) // 8
            return {"kty": "EC", "crv": "P-256" if size == 32 else "P-384",
                    "x": b64u(n.x.to_bytes(size, "big")), "y": b64u(n.y.to_bytes(size, "big"))}
        if isinstance(pub, rsa.RSAPublicKey):
            n = pub.public_numbers()
            return {"kty": "RSA", "n": b64u(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")),
                    "e": b64u(n.e.to_bytes(3, "big"))}
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}

    @property
    def thumbprint(self) -> str:
        jwk = self.jwk
        members = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"),
                   "OKP": ("crv", "kty", "x")}[jwk["kty"]]
        canon = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
        return b64u(hashlib.sha256(canon.encode()).digest())

    def sign_bytes(self, data: bytes) -> bytes:
        if self.alg in ("ES256", "ES384"):
            h = hashes.SHA256() if self.alg == "ES256" else hashes.SHA384()
            r, s = decode_dss_signature(self.priv.sign(data, ec.ECDSA(h)))
            size = 32 if self.alg == "ES256" else 48
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        if self.alg == "RS256":
            return bytes(self.priv.sign(data, padding.PKCS1v15(), hashes.SHA256()))
        return bytes(self.priv.sign(data))


def jws(key: Key, url: str, payload: Any, *, nonce: str | None, kid: str | None = None,
        use_jwk: bool | None = None, header: dict[str, Any] | None = None,
        alg: str | None = None) -> dict[str, str]:
    """Flattened JWS. payload None = POST-as-GET; bytes = raw payload."""
    prot: dict[str, Any] = {"alg": alg or key.alg, "url": url}
    if nonce is not None:
        prot["nonce"] = nonce
    if kid is not None:
        prot["kid"] = kid
    if use_jwk or (use_jwk is None and kid is None):
        prot["jwk"] = key.jwk
    prot.update(header or {})
    prot_b64 = b64u(json.dumps(prot).encode())
    if payload is None:
        body = b""
    elif isinstance(payload, bytes):
        body = payload
    else:
        body = json.dumps(payload).encode()
    pay_b64 = b64u(body)
    sig = key.sign_bytes(f"{prot_b64}.{pay_b64}".encode())
    return {"protected": prot_b64, "payload": pay_b64, "signature": b64u(sig)}


def csr_der(names: list[str], key: Any | None = None, *, ips: list[str] = ()) -> tuple[bytes, Any]:  # type: ignore[assignment]
    import ipaddress
    key = key or ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])] if names else []))
    b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    sign_hash = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return b.sign(key, sign_hash).public_bytes(serialization.Encoding.DER), key


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def problem(self) -> str:
        """The ACME error name of a problem document ('' when the reply is not one)."""
        if self.headers.get("Content-Type", "").startswith("application/problem+json"):
            return str(json.loads(self.body)["type"]).rsplit(":", 1)[-1]
        return ""

    @property
    def location(self) -> str:
        return str(self.headers.get("Location", ""))


@dataclass
class AcmeTestClient:
    """Wraps an aiohttp test client; keeps the directory, nonce and account URL."""

    http: Any
    base: str
    key: Key = field(default_factory=Key)
    kid: str | None = None
    directory: dict[str, Any] = field(default_factory=dict)
    nonce: str | None = None
    retry_bad_nonce: bool = False  # as stock clients do; off so tests see every badNonce

    async def start(self) -> AcmeTestClient:
        r = await self.http.get("/acme/directory")
        self.directory = await r.json()
        return self

    def url(self, name: str) -> str:
        return str(self.directory[name])

    def path(self, url: str) -> str:
        return url[len(self.base):] if url.startswith(self.base) else url

    async def fresh_nonce(self) -> str:
        r = await self.http.head("/acme/new-nonce")
        return str(r.headers["Replay-Nonce"])

    async def raw(self, url: str, body: bytes | dict[str, Any], *,
                  content_type: str = "application/jose+json") -> Reply:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = await self.http.post(self.path(url), data=data, headers={"Content-Type": content_type})
        reply = Reply(r.status, r.headers, await r.read())
        self.nonce = r.headers.get("Replay-Nonce", self.nonce)
        return reply

    async def post(self, url: str, payload: Any = None, *, key: Key | None = None,
                   use_jwk: bool | None = None, kid: str | None = "account", **kw: Any) -> Reply:
        """Signed POST; kid="account" means this client's account URL (or jwk if none)."""
        nonce = kw.pop("nonce", None) or self.nonce or await self.fresh_nonce()
        self.nonce = None
        if kid == "account":
            kid = self.kid
        body = jws(key or self.key, url, payload, nonce=nonce, kid=kid, use_jwk=use_jwk, **kw)
        reply = await self.raw(url, body)
        if self.retry_bad_nonce and reply.problem == "badNonce":
            self.retry_bad_nonce = False
            try:
                return await self.post(url, payload, key=key, use_jwk=use_jwk, kid=kid, **kw)
            finally:
                self.retry_bad_nonce = True
        return reply

    async def new_account(self, **payload: Any) -> Reply:
        payload.setdefault("termsOfServiceAgreed", True)
        r = await self.post(self.url("newAccount"), payload, kid=None)
        if r.status in (200, 201):
            self.kid = r.location
        return r

    async def new_order(self, *names: str, **extra: Any) -> Reply:
        idents = [{"type": "ip" if n[0].isdigit() else "dns", "value": n} for n in names]
        return await self.post(self.url("newOrder"), {"identifiers": idents, **extra})


# -- helpers for tests of the JWS pipeline, accounts, EAB and keyChange (additive) --------

PROBLEM_CONTENT_TYPE = "application/problem+json"


def assert_problem(reply: Reply, status: int, code: str, detail: str = "") -> dict[str, Any]:
    """A problem document with this status, ACME error name and a detail containing `detail`;
    every ACME response (errors too) carries a fresh Replay-Nonce and the index link."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers.get("Content-Type", "").startswith(PROBLEM_CONTENT_TYPE), reply.headers
    assert reply.problem == code, reply.body
    doc = reply.json
    assert doc["status"] == status, doc
    assert detail.lower() in doc["detail"].lower(), doc
    assert reply.headers.get("Replay-Nonce"), reply.headers
    assert 'rel="index"' in ",".join(reply.headers.getall("Link", [])), reply.headers
    return dict(doc)


def hmac_jws(hmac_key: bytes, protected: dict[str, Any], payload: bytes) -> dict[str, str]:
    """A flattened JWS MACed with HS256/384/512 (external account binding, RFC 8555 §7.3.4)."""
    import hmac as _hmac
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384,
              "HS512": hashlib.sha512}.get(protected.get("alg"), hashlib.sha256)
    prot_b64, pay_b64 = b64u(json.dumps(protected).encode()), b64u(payload)
    mac = _hmac.new(hmac_key, f"{prot_b64}.{pay_b64}".encode(), digest).digest()
    return {"protected": prot_b64, "payload": pay_b64, "signature": b64u(mac)}


def eab_binding(kid: str, hmac_key: bytes, jwk: dict[str, Any], url: str, *,
                alg: str = "HS256", header: dict[str, Any] | None = None) -> dict[str, str]:
    """externalAccountBinding for newAccount: the account JWK MACed with the EAB key."""
    protected: dict[str, Any] = {"alg": alg, "kid": kid, "url": url}
    protected.update(header or {})
    return hmac_jws(hmac_key, protected, json.dumps(jwk).encode())


def key_change_inner(new_key: Key, url: str, account_url: str, old_jwk: dict[str, Any], *,
                     kid: str | None = None, header: dict[str, Any] | None = None) -> dict[str, str]:
    """The inner JWS of keyChange (RFC 8555 §7.3.5), signed by the new key."""
    return jws(new_key, url, {"account": account_url, "oldKey": old_jwk}, nonce=None, kid=kid,
               use_jwk=kid is None, header=header)


async def signed_body(c: AcmeTestClient, url: str, payload: Any = None, *,
                      key: Key | None = None, use_jwk: bool | None = None,
                      kid: str | None = "account", **kw: Any) -> dict[str, str]:
    """A correctly signed JWS with a fresh nonce, not sent, for tests that then break it."""
    nonce = kw.pop("nonce", None) or c.nonce or await c.fresh_nonce()
    c.nonce = None
    if kid == "account":
        kid = c.kid
    return jws(key or c.key, url, payload, nonce=nonce, kid=kid, use_jwk=use_jwk, **kw)


def key_from_private(priv: Any) -> Key:
    """Wrap an existing private key (e.g. a certificate key) so it can sign JWS."""
    if isinstance(priv, ec.EllipticCurvePrivateKey):
        kind = "ec-p256" if priv.curve.key_size == 256 else "ec-p384"
        alg = "ES256" if kind == "ec-p256" else "ES384"
    elif isinstance(priv, rsa.RSAPrivateKey):
        kind, alg = f"rsa-{priv.key_size}", "RS256"
    elif isinstance(priv, ed25519.Ed25519PrivateKey):
        kind, alg = "ed25519", "EdDSA"
    else:
        raise ValueError(type(priv).__name__)
    k = Key.__new__(Key)
    k.kind, k.priv, k.alg = kind, priv, alg
    return k
