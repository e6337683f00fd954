"""`packed` with x5c (WebAuthn §8.2) and `step` (step CLI): `{alg, sig, x5c}` where `sig`
is the x5c leaf key's signature over the key authorization (draft-ietf-acme-device-attest
puts the key authorization where WebAuthn has authenticatorData || clientDataHash)."""
from __future__ import annotations

from typing import Any, Mapping

from cryptography import x509

from server.va.attest import cose
from server.va.attest.errors import attestation_failure

MAX_CHAIN = 5


def verify(att_stmt: Mapping[str, Any], signed: bytes) -> list[x509.Certificate]:
    alg, sig, x5c = att_stmt.get("alg"), att_stmt.get("sig"), att_stmt.get("x5c")
    if not isinstance(sig, bytes) or not sig:
        raise attestation_failure("malformed attStmt", "sig must be a byte string")
    if not isinstance(x5c, list) or not x5c or not all(isinstance(c, bytes) for c in x5c):
        raise attestation_failure("malformed attStmt", "x5c must be a non-empty array of DER "
                                  "certificates (self attestation is not accepted)")
    if len(x5c) > MAX_CHAIN:
        raise attestation_failure("malformed attStmt", f"x5c has more than {MAX_CHAIN} certificates")
    try:
        chain = [x509.load_der_x509_certificate(der) for der in x5c]
    except ValueError as exc:
        raise attestation_failure("malformed attStmt", f"x5c holds a certificate that is not "
                                  f"DER X.509: {exc}") from None
    try:
        key = chain[0].public_key()
    except ValueError as exc:
        raise attestation_failure("malformed attStmt", f"bootstrap key unreadable: {exc}") from None
    cose.verify(alg, key, sig, signed)
    return chain
