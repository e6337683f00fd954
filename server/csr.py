"""CSR checks for finalize: signature, key policy, identifiers. Pure, no I/O."""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from server.errors import AcmeProblem
from server.models import Identifier

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True)
class CheckedCSR:
    public_key: PublicKey
    key_type: str  # one of config.KEY_TYPES
    key_fingerprint: str  # SHA-256 of the SubjectPublicKeyInfo, hex
    identifiers: list[Identifier]


def key_type_of(key: object) -> str | None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}.get(key.curve.name)
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}" if key.key_size in (2048, 3072, 4096) else None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    return None


def _describe(key: object) -> str:
    """Name a refused key the way the operator would (rsa-1024, ec-secp521r1), not by class."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ec-{key.curve.name}"
    return type(key).__name__.lstrip("_")


def spki_fingerprint(key: PublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _weak_rsa(key: rsa.RSAPublicKey) -> str | None:
    nums = key.public_numbers()
    if nums.e < 65537 or nums.e % 2 == 0:
        return f"RSA public exponent {nums.e} is not accepted"
    # Cheap screen for keys with tiny factors (broken generators); Boulder's goodkey does more.
    for p in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73):
        if nums.n % p == 0:
            return "RSA modulus has a small factor"
    return None


def check_csr(der: bytes, *, allowed_keys: tuple[str, ...]) -> CheckedCSR:
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError as exc:
        raise AcmeProblem("badCSR", f"CSR is not a DER PKCS#10 request: {exc}") from None
    try:
        key = csr.public_key()
    except (ValueError, TypeError) as exc:
        raise AcmeProblem("badCSR", f"CSR public key cannot be read: {exc}") from None
    if not csr.is_signature_valid:
        raise AcmeProblem("badCSR", "CSR signature does not verify with its public key")
    ktype = key_type_of(key)
    if ktype is None or ktype not in allowed_keys:
        raise AcmeProblem("badCSR", f"CSR key type {ktype or _describe(key)} is not accepted "
                          f"(rule acme.allowed_keys: {', '.join(allowed_keys)})")
    if isinstance(key, rsa.RSAPublicKey) and (weak := _weak_rsa(key)):
        raise AcmeProblem("badCSR", weak)
    if isinstance(key, ec.EllipticCurvePublicKey):
        try:  # refuses points not on the curve
            ec.EllipticCurvePublicKey.from_encoded_point(
                key.curve, key.public_bytes(serialization.Encoding.X962,
                                            serialization.PublicFormat.UncompressedPoint))
        except ValueError:
            raise AcmeProblem("badCSR", "CSR EC public key is not a valid point") from None
    return CheckedCSR(public_key=key, key_type=ktype, key_fingerprint=spki_fingerprint(key),  # type: ignore[arg-type]
                      identifiers=csr_identifiers(csr))


def csr_identifiers(csr: x509.CertificateSigningRequest) -> list[Identifier]:
    names: set[Identifier] = set()
    for attr in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = str(attr.value).lower().rstrip(".")
        try:
            names.add(Identifier("ip", str(ipaddress.ip_address(value))))
        except ValueError:
            names.add(Identifier("dns", value))
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    except ValueError as exc:
        raise AcmeProblem("badCSR", f"CSR extensions cannot be parsed: {exc}") from None
    if san is not None:
        for gn in san:
            if isinstance(gn, x509.DNSName):
                names.add(Identifier("dns", gn.value.lower().rstrip(".")))
            elif isinstance(gn, x509.IPAddress):
                names.add(Identifier("ip", str(gn.value)))
            else:
                raise AcmeProblem("badCSR", f"CSR asks for an unsupported name type {type(gn).__name__}")
    return sorted(names, key=lambda i: (i.type, i.value))
