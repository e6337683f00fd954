"""Parse and verify an ACME JWS (RFC 8555 §6.2, RFC 7515/7518/8037) in one pipeline.

josepy has no EdDSA/OKP keys, and its object model costs more per request than the
verification itself, so verification is done here directly with `cryptography`. Checks
run in the order that keeps a forged request from burning a nonce: structure, algorithm,
key, signature, then nonce and url (the callers' job, see `server.api.auth`).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from server.errors import AcmeProblem, malformed

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

ALGORITHMS = ("ES256", "ES384", "RS256", "EdDSA")
_EC_CURVES = {"P-256": (ec.SECP256R1(), 32, "ES256"), "P-384": (ec.SECP384R1(), 48, "ES384")}
_HASH = {"ES256": hashes.SHA256(), "ES384": hashes.SHA384(), "RS256": hashes.SHA256()}
# curve name -> (alg, coordinate size, signature algorithm object, built once: per request
# it cost about as much as the dict lookups around it)
_EC_VERIFY = {"secp256r1": ("ES256", 32, ec.ECDSA(hashes.SHA256())),
              "secp384r1": ("ES384", 48, ec.ECDSA(hashes.SHA384()))}
MIN_RSA_BITS = 2048


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64d(value: Any, what: str) -> bytes:
    """Strict base64url without padding (RFC 7515 §2): Python's decoder would silently drop
    characters outside the alphabet and accept '=', '+' and '/'."""
    if not isinstance(value, str):
        raise malformed(f"{what} is not a base64url string")
    if not _B64URL.fullmatch(value) or len(value) % 4 == 1:
        raise malformed(f"{what} is not valid base64url (unpadded, RFC 7515 §2)")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise malformed(f"{what} is not valid base64url") from None


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bad_alg(detail: str) -> AcmeProblem:
    return AcmeProblem("badSignatureAlgorithm", detail, extra={"algorithms": list(ALGORITHMS)})


@dataclass(frozen=True)
class ParsedJWS:
    protected: dict[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.protected["alg"])


def parse_jws(body: bytes) -> ParsedJWS:
    try:
        obj = json.loads(body)
    # RecursionError: deeply nested JSON ("[[[[...") would otherwise surface as a 500.
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise malformed("request body is not JSON") from None
    if not isinstance(obj, dict):
        raise malformed("request body is not a JWS object")
    if "signatures" in obj:
        raise malformed("JWS with multiple signatures is not allowed (RFC 8555 §6.2)")
    if "header" in obj:
        raise malformed("JWS unprotected header is not allowed (RFC 8555 §6.2)")
    missing = [k for k in ("protected", "payload", "signature") if k not in obj]
    if missing:
        raise malformed(f"JWS is missing {', '.join(missing)} (flattened JSON serialization)")
    prot_b64, payload_b64 = obj["protected"], obj["payload"]
    if not isinstance(prot_b64, str) or not isinstance(payload_b64, str):
        raise malformed("JWS protected and payload must be strings")
    try:
        protected = json.loads(b64d(prot_b64, "protected header"))
    except (ValueError, RecursionError):
        raise malformed("JWS protected header is not JSON") from None
    if not isinstance(protected, dict):
        raise malformed("JWS protected header is not an object")
    if protected.get("b64") is False:
        raise malformed("JWS unencoded payload option is not allowed (RFC 8555 §6.2)")
    if "crit" in protected:
        # RFC 7515 §4.1.11: a recipient must refuse critical extensions it does not
        # understand, and ACME defines none; they used to be silently ignored.
        raise malformed("JWS crit header parameter is not supported")
    alg = protected.get("alg")
    if not isinstance(alg, str):
        raise malformed("JWS protected header has no alg")
    if alg == "none" or alg.startswith("HS") or alg not in ALGORITHMS:
        raise bad_alg(f"algorithm {alg!r} is not accepted; use one of {', '.join(ALGORITHMS)}")
    return ParsedJWS(protected=protected, payload=b64d(payload_b64, "payload"),
                     signing_input=f"{prot_b64}.{payload_b64}".encode(),
                     signature=b64d(obj["signature"], "signature"))


def key_from_jwk(jwk: Any) -> PublicKey:
    """Public key from a JWK; refuses private members, weak RSA, unsupported curves."""
    if not isinstance(jwk, dict):
        raise malformed("jwk is not an object")
    if "d" in jwk or "p" in jwk:
        raise AcmeProblem("badPublicKey", "jwk contains private key material")
    kty = jwk.get("kty")
    try:
        if kty == "EC":
            crv = _EC_CURVES.get(jwk.get("crv"))  # type: ignore[arg-type]
            if crv is None:
                raise AcmeProblem("badPublicKey", f"EC curve {jwk.get('crv')!r} is not accepted "
                                  "(P-256, P-384)")
            curve, size, _ = crv
            x, y = b64d(jwk.get("x"), "jwk.x"), b64d(jwk.get("y"), "jwk.y")
            if len(x) != size or len(y) != size:
                raise AcmeProblem("badPublicKey", "EC coordinates have the wrong length")
            return ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                                 curve).public_key()
        if kty == "RSA":
            n = int.from_bytes(b64d(jwk.get("n"), "jwk.n"), "big")
            e = int.from_bytes(b64d(jwk.get("e"), "jwk.e"), "big")
            if n.bit_length() < MIN_RSA_BITS:
                raise AcmeProblem("badPublicKey", f"RSA key of {n.bit_length()} bits is too small "
                                  f"(minimum {MIN_RSA_BITS})")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if kty == "OKP":
            if jwk.get("crv") != "Ed25519":
                raise AcmeProblem("badPublicKey", f"OKP curve {jwk.get('crv')!r} is not accepted (Ed25519)")
            return ed25519.Ed25519PublicKey.from_public_bytes(b64d(jwk.get("x"), "jwk.x"))
    except ValueError as exc:
        raise AcmeProblem("badPublicKey", f"invalid public key: {exc}") from None
    raise AcmeProblem("badPublicKey", f"key type {kty!r} is not accepted (EC, RSA, OKP)")


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) over the required members only."""
    kty = jwk.get("kty")
    members = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"),
               "OKP": ("crv", "kty", "x")}.get(str(kty))
    if members is None:
        raise AcmeProblem("badPublicKey", f"key type {kty!r} is not accepted")
    # A JWK missing a member (e.g. {"kty": "EC"} as keyChange oldKey or an EAB payload)
    # raised KeyError here, which became a 500.
    missing = [m for m in members if not isinstance(jwk.get(m), str)]
    if missing:
        raise AcmeProblem("badPublicKey", f"jwk lacks {', '.join(missing)}")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64e(hashlib.sha256(canonical.encode()).digest())


def public_jwk(jwk: dict[str, Any]) -> dict[str, Any]:
    """The public members we store (drops alg/use/kid and anything a client added)."""
    kty = jwk["kty"]
    keep = {"EC": ("kty", "crv", "x", "y"), "RSA": ("kty", "n", "e"), "OKP": ("kty", "crv", "x")}[kty]
    return {k: jwk[k] for k in keep}


def verify_signature(jws: ParsedJWS, key: PublicKey) -> None:
    alg, sig = jws.alg, jws.signature
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            expected = _EC_VERIFY.get(key.curve.name)
            if expected is None or expected[0] != alg:
                raise bad_alg(f"algorithm {alg} does not match the {key.curve.name} key")
            _, size, algorithm = expected
            if len(sig) != 2 * size:
                raise malformed("JWS signature has the wrong length")
            der = encode_dss_signature(int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big"))
            key.verify(der, jws.signing_input, algorithm)
        elif isinstance(key, rsa.RSAPublicKey):
            if alg != "RS256":
                raise bad_alg(f"algorithm {alg} does not match an RSA key")
            key.verify(sig, jws.signing_input, padding.PKCS1v15(), _HASH[alg])
        else:
            if alg != "EdDSA":
                raise bad_alg(f"algorithm {alg} does not match an Ed25519 key")
            key.verify(sig, jws.signing_input)
    except InvalidSignature:
        raise malformed("JWS signature is invalid") from None


def verify_with_key(jws: ParsedJWS, jwk: dict[str, Any]) -> PublicKey:
    key = key_from_jwk(jwk)
    verify_signature(jws, key)
    return key


def payload_json(jws: ParsedJWS) -> dict[str, Any]:
    try:
        value = json.loads(jws.payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise malformed("JWS payload is not JSON") from None
    if not isinstance(value, dict):
        raise malformed("JWS payload is not a JSON object")
    return value


def jwk_of_public_key(key: Any) -> dict[str, Any]:
    """The public JWK of a `cryptography` key (to compare CSR keys with account keys)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        size = (key.curve.key_size + 7) // 8
        nums = key.public_numbers()
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(key.curve.name, "")
        return {"kty": "EC", "crv": crv, "x": b64e(nums.x.to_bytes(size, "big")),
                "y": b64e(nums.y.to_bytes(size, "big"))}
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        return {"kty": "RSA", "n": b64e(nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")),
                "e": b64e(nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big"))}
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64e(raw)}
    raise ValueError(f"unsupported key {type(key).__name__}")
