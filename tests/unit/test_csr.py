"""server.csr: parsing, signature, key policy and the names a CSR asks for."""
from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from server.config import KEY_TYPES
from server.csr import _weak_rsa, check_csr, csr_identifiers, key_type_of
from server.errors import AcmeProblem
from server.models import Identifier

_RSA2048 = rsa.generate_private_key(65537, 2048)  # generated once: RSA keygen is slow


def make_csr(key: Any = None, *, cn: str | None = None, sans: list[x509.GeneralName] | None = None,
             ) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []))
    if sans is not None:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algo = None if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) \
        else hashes.SHA256()
    return b.sign(key, algo).public_bytes(serialization.Encoding.DER)


def bad(der: bytes, fragment: str, allowed: tuple[str, ...] = KEY_TYPES) -> None:
    with pytest.raises(AcmeProblem) as exc:
        check_csr(der, allowed_keys=allowed)
    assert exc.value.code == "badCSR"
    assert fragment in exc.value.detail, exc.value.detail


def test_valid_csr() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = make_csr(key, cn="b.test", sans=[x509.DNSName("b.test"), x509.DNSName("a.test")])
    out = check_csr(der, allowed_keys=KEY_TYPES)
    assert out.identifiers == [Identifier("dns", "a.test"), Identifier("dns", "b.test")]
    assert out.key_type == "ec-p256"
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    assert out.key_fingerprint == hashlib.sha256(spki).hexdigest()
    assert out.public_key == key.public_key()


@pytest.mark.parametrize("cn,sans,want", [
    ("only.test", None, [("dns", "only.test")]),
    (None, [x509.DNSName("san.test")], [("dns", "san.test")]),
    ("cn.test", [x509.DNSName("san.test")], [("dns", "cn.test"), ("dns", "san.test")]),
    ("Mixed.TEST.", [x509.DNSName("MIXED.test")], [("dns", "mixed.test")]),
    ("10.0.0.1", None, [("ip", "10.0.0.1")]),
    (None, [x509.IPAddress(ipaddress.ip_address("2001:db8::1")), x509.DNSName("a.test")],
     [("dns", "a.test"), ("ip", "2001:db8::1")]),
    (None, [x509.DNSName("dup.test"), x509.DNSName("dup.test")], [("dns", "dup.test")]),
    (None, None, []),
])
def test_identifiers(cn: str | None, sans: list[x509.GeneralName] | None,
                     want: list[tuple[str, str]]) -> None:
    out = check_csr(make_csr(cn=cn, sans=sans), allowed_keys=KEY_TYPES)
    assert out.identifiers == [Identifier(t, v) for t, v in want]


@pytest.mark.parametrize("name,fragment", [
    (x509.RFC822Name("a@b.test"), "RFC822Name"),
    (x509.UniformResourceIdentifier("spiffe://td/x"), "UniformResourceIdentifier"),
])
def test_unsupported_san_types(name: x509.GeneralName, fragment: str) -> None:
    bad(make_csr(sans=[x509.DNSName("a.test"), name]), fragment)


def test_not_der() -> None:
    bad(b"\x30\x03\x02\x01\x00", "not a DER PKCS#10")
    bad(b"", "not a DER PKCS#10")


def test_tampered_signature() -> None:
    der = make_csr(sans=[x509.DNSName("a.test")])
    bad(der[:-1] + bytes([der[-1] ^ 1]), "signature")


def test_tampered_body() -> None:
    der = bytearray(make_csr(sans=[x509.DNSName("aaaa.test")]))
    i = der.index(b"aaaa.test")
    der[i] = ord("b")  # the request now asks for baaa.test, which the key never signed
    bad(bytes(der), "signature")


@pytest.mark.parametrize("make_key,ktype", [
    (lambda: ec.generate_private_key(ec.SECP256R1()), "ec-p256"),
    (lambda: ec.generate_private_key(ec.SECP384R1()), "ec-p384"),
    (lambda: _RSA2048, "rsa-2048"),
    (lambda: ed25519.Ed25519PrivateKey.generate(), "ed25519"),
], ids=["p256", "p384", "rsa2048", "ed25519"])
def test_accepted_key_types(make_key: Any, ktype: str) -> None:
    key = make_key()
    assert key_type_of(key.public_key()) == ktype
    out = check_csr(make_csr(key, sans=[x509.DNSName("a.test")]), allowed_keys=KEY_TYPES)
    assert out.key_type == ktype
    # and refused when the operator does not allow that type
    bad(make_csr(key, sans=[x509.DNSName("a.test")]), "acme.allowed_keys",
        tuple(k for k in KEY_TYPES if k != ktype))


@pytest.mark.parametrize("make_key,fragment", [
    (lambda: rsa.generate_private_key(65537, 1024), "rsa-1024"),
    (lambda: ec.generate_private_key(ec.SECP521R1()), "ec-secp521r1"),
    (lambda: ec.generate_private_key(ec.SECP256K1()), "ec-secp256k1"),
    (lambda: ed448.Ed448PrivateKey.generate(), "Ed448PublicKey"),
], ids=["rsa1024", "p521", "secp256k1", "ed448"])
def test_refused_key_types(make_key: Any, fragment: str) -> None:
    der = make_csr(make_key(), sans=[x509.DNSName("a.test")])
    bad(der, fragment)
    bad(der, "acme.allowed_keys")


def test_rsa_exponent_3_is_refused() -> None:
    key = rsa.generate_private_key(3, 2048)
    bad(make_csr(key, sans=[x509.DNSName("a.test")]), "exponent 3")


def test_rsa_small_factor_screen() -> None:
    big = _RSA2048.private_numbers().p  # a 1024-bit prime
    assert _weak_rsa(rsa.RSAPublicNumbers(65537, 7 * big * big).public_key()) \
        == "RSA modulus has a small factor"
    assert _weak_rsa(_RSA2048.public_key()) is None
    assert "exponent 17" in str(_weak_rsa(rsa.RSAPublicNumbers(17, big * big).public_key()))


def test_csr_identifiers_from_parsed_request() -> None:
    csr = x509.load_der_x509_csr(make_csr(cn="x.test", sans=[x509.DNSName("y.test")]))
    assert csr_identifiers(csr) == [Identifier("dns", "x.test"), Identifier("dns", "y.test")]
