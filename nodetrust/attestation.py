"""The node side of device-attest-01: sign the key authorization with the bootstrap key
and package it as a `step`/`packed` attestation object. This is the reference device
makers can follow: ~40 lines, no ACME state."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

# COSE algorithm ids (RFC 9053)
_ES256, _ES384, _EDDSA, _RS256 = -7, -35, -8, -257


def load_bootstrap(cert_path: Path, key_path: Path) -> tuple[Any, list[bytes]]:
    """(private key, [leaf DER, intermediates DER...]) from PEM files."""
    chain = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    return key, [c.public_bytes(serialization.Encoding.DER) for c in chain]


def sign_key_authorization(key: Any, data: bytes) -> tuple[int, bytes]:
    """(COSE alg, signature); ECDSA signatures are ASN.1 DER, as WebAuthn and step send."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name == "secp384r1":
            return _ES384, key.sign(data, ec.ECDSA(hashes.SHA384()))
        return _ES256, key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return _EDDSA, key.sign(data)
    if isinstance(key, rsa.RSAPrivateKey):
        return _RS256, key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    raise ValueError(f"unsupported bootstrap key type {type(key).__name__}")


def build_att_obj(key_authorization: str, key: Any, chain_der: list[bytes], *,
                  fmt: str = "step") -> str:
    """base64url(CBOR {"fmt", "attStmt": {"alg", "sig", "x5c"}}) for the challenge response."""
    alg, sig = sign_key_authorization(key, key_authorization.encode())
    obj = cbor2.dumps({"fmt": fmt, "attStmt": {"alg": alg, "sig": sig, "x5c": list(chain_der)}})
    return base64.urlsafe_b64encode(obj).rstrip(b"=").decode()
