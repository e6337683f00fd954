"""COSE algorithm identifiers (RFC 9053, IANA registry) -> signature verification."""
from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from server.va.attest.errors import attestation_failure

ES256, ES384, EDDSA, PS256, RS256 = -7, -35, -8, -37, -257
NAMES = {ES256: "ES256", ES384: "ES384", EDDSA: "EdDSA", PS256: "PS256", RS256: "RS256"}
_EC = {ES256: ("secp256r1", hashes.SHA256(), 32), ES384: ("secp384r1", hashes.SHA384(), 48)}


def _ecdsa_der(sig: bytes, size: int) -> bytes:
    """WebAuthn and step send ASN.1 DER; accept raw r||s (COSE's own form) too."""
    if len(sig) == 2 * size and sig[0] != 0x30:
        return encode_dss_signature(int.from_bytes(sig[:size], "big"),
                                    int.from_bytes(sig[size:], "big"))
    return sig


def verify(alg: Any, key: Any, sig: bytes, data: bytes) -> None:
    if not isinstance(alg, int) or isinstance(alg, bool) or alg not in NAMES:
        raise attestation_failure("signature", f"COSE algorithm {alg!r} is not supported "
                                  f"({', '.join(f'{v} ({k})' for k, v in NAMES.items())})")
    name = NAMES[alg]
    try:
        if alg in _EC:
            curve, digest, size = _EC[alg]
            if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != curve:
                raise attestation_failure("signature", f"alg {name} does not match the bootstrap key")
            key.verify(_ecdsa_der(sig, size), data, ec.ECDSA(digest))
        elif alg == EDDSA:
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise attestation_failure("signature", "alg EdDSA does not match the bootstrap key")
            key.verify(sig, data)
        else:
            if not isinstance(key, rsa.RSAPublicKey):
                raise attestation_failure("signature", f"alg {name} does not match the bootstrap key")
            pad = padding.PKCS1v15() if alg == RS256 else padding.PSS(
                mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
            key.verify(sig, data, pad, hashes.SHA256())
    except (InvalidSignature, ValueError):
        raise attestation_failure("signature mismatch", f"the {name} signature over the key "
                                  "authorization does not verify with the bootstrap key") from None
