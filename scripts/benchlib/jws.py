"""A lean ES256 JWS signer for ACME (RFC 8555 §6.2) plus the CSR helper; no josepy overhead."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

_COMPACT = (",", ":")


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class AccountKey:
    """An ECDSA P-256 account key with its JWK and RFC 7638 thumbprint."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        numbers = self._key.public_key().public_numbers()
        self.jwk: dict[str, str] = {
            "crv": "P-256",
            "kty": "EC",
            "x": b64u(numbers.x.to_bytes(32, "big")),
            "y": b64u(numbers.y.to_bytes(32, "big")),
        }
        canonical = json.dumps(self.jwk, sort_keys=True, separators=_COMPACT).encode()
        self.thumbprint = b64u(hashlib.sha256(canonical).digest())

    def key_authorization(self, token: str) -> str:
        return f"{token}.{self.thumbprint}"

    def sign(self, url: str, nonce: str, payload: dict[str, Any] | None, kid: str | None) -> bytes:
        """Flattened JWS JSON; payload None means POST-as-GET (empty payload)."""
        protected: dict[str, Any] = {"alg": "ES256", "nonce": nonce, "url": url}
        if kid is None:
            protected["jwk"] = self.jwk
        else:
            protected["kid"] = kid
        p64 = b64u(json.dumps(protected, separators=_COMPACT).encode())
        pl64 = "" if payload is None else b64u(json.dumps(payload, separators=_COMPACT).encode())
        der = self._key.sign(f"{p64}.{pl64}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = b64u(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        return json.dumps(
            {"protected": p64, "payload": pl64, "signature": signature}, separators=_COMPACT
        ).encode()


def make_csr(name: str | None) -> str:
    """base64url DER CSR for `name` (SAN only) with a fresh P-256 key; None: no names at all
    (device-attest-01: the server takes the identity from the attested device)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if name is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]),
                                        critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return b64u(csr.public_bytes(serialization.Encoding.DER))
