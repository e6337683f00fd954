"""The bootstrap mTLS listener: a device presents its factory certificate as a TLS client
certificate and receives External Account Binding credentials bound to that device.

It exists for ACME clients without device-attest-01 (stock lego, go-acme/lego#2257): the
account made with these credentials is pre-authorized for exactly the device's
identifiers, so the bootstrap proof is kept. Served on its own port, with its own TLS
context that trusts manufacturer roots only (never the operational CA).
"""
from __future__ import annotations

import _ssl
import json
import logging
import ssl
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from server.api.context import API, ApiContext
from server.errors import ACME_ERROR_PREFIX, ValidationFailure
from server.jws import b64e
from server.va.attest.chains import ManufacturerTrust

log = logging.getLogger("nodetrust.bootstrap")

MAX_CHAIN = 8  # certificates taken from the client's handshake: leaf + intermediates


def _peer_chain(ssl_object: Any) -> list[x509.Certificate]:
    """The certificates the device sent in its handshake, leaf first. OpenSSL verified them
    against the manufacturer roots; they are verified again (with CRLs and the device rules)
    by the attestation code, which needs the intermediates too, not only the leaf."""
    get = getattr(ssl_object, "get_unverified_chain", None)  # Python >= 3.13
    if get is None:  # 3.10-3.12 have it on the private _ssl object only
        get = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    chain = get() if get is not None else None
    if not chain:
        der = ssl_object.getpeercert(binary_form=True)
        return [x509.load_der_x509_certificate(der)] if der else []
    return [x509.load_der_x509_certificate(c if isinstance(c, bytes)
                                           else c.public_bytes(_ssl.ENCODING_DER))
            for c in chain[:MAX_CHAIN]]


def _problem(status: int, code: str, detail: str) -> web.Response:
    return web.Response(status=status, content_type="application/problem+json",
                        text=json.dumps({"type": ACME_ERROR_PREFIX + code, "detail": detail,
                                         "status": status}))


async def eab(request: web.Request) -> web.Response:
    ctx: ApiContext = request.app[API]
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    try:
        chain = _peer_chain(ssl_object) if ssl_object is not None else []
    except ValueError as exc:
        return _problem(400, "malformed", f"unreadable client certificate: {exc}")
    if not chain:
        return _problem(401, "unauthorized", "present the device's bootstrap certificate as the "
                        "TLS client certificate")
    devices = ctx.orders.devices
    if devices is None or not devices.enabled:
        return _problem(403, "unauthorized", "device attestation is switched off "
                        "(rule attestation.enabled)")
    try:
        key, identity = await devices.eab_for_bootstrap(chain[0], chain[1:])
    except ValidationFailure as f:
        log.info("bootstrap EAB refused: %s", f.detail)
        return _problem(403, f.code, f.detail)
    return web.json_response({
        "kid": key.kid, "hmac_key": b64e(key.hmac_key), "device_id": identity.device_id,
        "node_id": identity.node_id, "dns_name": identity.dns_name,
        "spiffe_id": identity.spiffe_id, "directory": ctx.links.directory(),
    }, status=201)


def create_bootstrap_app(ctx: ApiContext) -> web.Application:
    app = web.Application(client_max_size=4096)
    app[API] = ctx
    app.router.add_post("/bootstrap/eab", eab)
    return app


def bootstrap_tls_context(cert: Path, key: Path,
                          trust: Callable[[], ManufacturerTrust]) -> ssl.SSLContext:
    """Client certificates must chain to a manufacturer root. The roots can change on
    SIGHUP, and an SSLContext cannot drop CAs, so each handshake gets a context built from
    the trust in force (swapped in through the SNI callback)."""
    def build() -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        roots = [r for m in trust().manufacturers for r in m.roots]
        if roots:
            ctx.load_verify_locations(cadata="".join(
                r.public_bytes(serialization.Encoding.PEM).decode() for r in roots))
        return ctx

    current: dict[str, Any] = {"trust": None, "ctx": None}

    def pick(sock: ssl.SSLObject, server_name: str | None, base: ssl.SSLContext) -> None:
        if current["trust"] is not trust():
            current["trust"], current["ctx"] = trust(), build()
        sock.context = current["ctx"]

    base = build()
    base.sni_callback = pick  # type: ignore[assignment]
    return base
