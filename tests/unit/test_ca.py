"""server.ca: real files in tmp dirs, chains checked by cryptography's verifier and by OpenSSL."""

from __future__ import annotations

import ipaddress
import os
import shutil
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import DNSName
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from server.ca import (
    KEY_TYPES,
    PERMANENT_IDENTIFIER_OID,
    CAError,
    CertificateAuthority,
    IssuedCertificate,
    encode_permanent_identifier,
    generate_key,
    key_description,
)

NOW = datetime.now(UTC).replace(microsecond=0)
LEAF_KEY_TYPES = ("rsa-2048", "ec-p256", "ed25519")


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertificateAuthority]:
    """One CA per key type, made once: RSA-3072 key generation is slow."""
    base = tmp_path_factory.mktemp("cas")
    return {
        kt: CertificateAuthority.load_or_create(base / kt, key_type=kt, now=NOW) for kt in KEY_TYPES
    }


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca", now=NOW)


def issue(ca: CertificateAuthority, key_type: str = "ec-p256", **kw: Any) -> IssuedCertificate:
    kw.setdefault("dns_names", ["node1.example"])
    key = generate_key(key_type).public_key()
    return ca.issue(
        key, not_before=NOW - timedelta(minutes=1), not_after=NOW + timedelta(days=1), **kw
    )


def chain_of(issued: IssuedCertificate) -> tuple[x509.Certificate, list[x509.Certificate]]:
    leaf, *rest = x509.load_pem_x509_certificates(issued.chain_pem)
    return leaf, rest


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- creation and loading ------------------------------------------------------------------------


def test_create_writes_files_keys_private(tmp_path: Path) -> None:
    ca_dir = tmp_path / "new" / "ca"
    ca = CertificateAuthority.load_or_create(ca_dir, now=NOW)
    assert sorted(p.name for p in ca_dir.iterdir()) == [
        "intermediate.key",
        "intermediate.pem",
        "root.key",
        "root.pem",
    ]  # no temp files left
    assert mode(ca_dir) == 0o700
    assert mode(ca_dir / "root.key") == mode(ca_dir / "intermediate.key") == 0o600
    assert ca.root_path == ca_dir / "root.pem"
    assert ca.root_pem == (ca_dir / "root.pem").read_bytes()
    assert ca.intermediate_pem == (ca_dir / "intermediate.pem").read_bytes()
    assert ca.key_type == "ec-p256"


def test_ca_certificates_profile(cas: dict[str, CertificateAuthority]) -> None:
    ca = cas["ec-p256"]
    root = x509.load_pem_x509_certificate(ca.root_pem)
    inter = ca.intermediate_cert
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    bc = inter.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    for cert in (root, inter):
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
        assert not ku.value.digital_signature
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = inter.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    assert root.not_valid_after_utc - root.not_valid_before_utc >= timedelta(days=3650)
    assert inter.not_valid_after_utc - inter.not_valid_before_utc >= timedelta(days=5 * 365)


def test_reload_keeps_same_root(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path, key_type="ec-p384", now=NOW)
    again = CertificateAuthority.load_or_create(tmp_path, now=NOW + timedelta(days=1))
    fp = hashes.SHA256()
    assert x509.load_pem_x509_certificate(again.root_pem).fingerprint(
        fp
    ) == x509.load_pem_x509_certificate(first.root_pem).fingerprint(fp)
    assert again.intermediate_cert == first.intermediate_cert
    assert again.key_type == "ec-p384"  # the files win over the (default) key_type argument
    issued = issue(again)
    x509.load_der_x509_certificate(issued.der).verify_directly_issued_by(first.intermediate_cert)


def test_corrupted_intermediate_names_file(ca: CertificateAuthority, tmp_path: Path) -> None:
    (tmp_path / "ca" / "intermediate.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
    with pytest.raises(CAError, match="intermediate.pem"):
        CertificateAuthority.load_or_create(tmp_path / "ca", now=NOW)


def test_mismatched_key_rejected(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    shutil.copyfile(ca_dir / "root.key", ca_dir / "intermediate.key")
    with pytest.raises(CAError, match=r"intermediate\.key: private key does not match"):
        CertificateAuthority.load_or_create(ca_dir, now=NOW)


def test_intermediate_from_other_ca_rejected(ca: CertificateAuthority, tmp_path: Path) -> None:
    other = tmp_path / "other"
    CertificateAuthority.load_or_create(other, now=NOW)
    for name in ("intermediate.pem", "intermediate.key"):
        shutil.copyfile(other / name, tmp_path / "ca" / name)
    with pytest.raises(
        CAError, match=r"intermediate\.pem: intermediate certificate is not signed by the root"
    ):
        CertificateAuthority.load_or_create(tmp_path / "ca", now=NOW)


def test_expired_intermediate_rejected(ca: CertificateAuthority, tmp_path: Path) -> None:
    with pytest.raises(CAError, match=r"intermediate\.pem: .* not valid now"):
        CertificateAuthority.load_or_create(tmp_path / "ca", now=NOW + timedelta(days=6 * 365))


def test_half_made_ca_detected_and_temps_cleaned(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    (ca_dir / "root.pem").unlink()  # root.pem is renamed into place last
    stale = ca_dir / ".root.pem.abc123.tmp"
    stale.write_bytes(b"partial")
    with pytest.raises(CAError, match=r"root\.pem: missing .*interrupted"):
        CertificateAuthority.load_or_create(ca_dir, now=NOW)
    assert not stale.exists()
    assert (ca_dir / "intermediate.key").exists()  # never overwrites existing keys


def test_unknown_key_type(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="unknown CA key type 'dsa'"):
        CertificateAuthority.load_or_create(tmp_path, key_type="dsa")
    assert not any(tmp_path.iterdir())


# --- issuance ------------------------------------------------------------------------------------


@pytest.mark.parametrize("leaf_type", LEAF_KEY_TYPES)
@pytest.mark.parametrize("ca_type", [kt for kt in KEY_TYPES if kt != "ed25519"])
def test_leaf_verifies_with_cryptography(
    cas: dict[str, CertificateAuthority], ca_type: str, leaf_type: str
) -> None:
    ca = cas[ca_type]
    issued = issue(
        ca,
        leaf_type,
        dns_names=["node1.example"],
        uris=["spiffe://example.org/node1"],
        permanent_identifiers=["SN-42"],
    )
    leaf, intermediates = chain_of(issued)
    assert intermediates == [ca.intermediate_cert]
    builder = PolicyBuilder().store(Store([x509.load_pem_x509_certificate(ca.root_pem)])).time(NOW)
    chain = builder.build_server_verifier(DNSName("node1.example")).verify(leaf, intermediates)
    assert len(chain) == 3
    client = builder.build_client_verifier().verify(leaf, intermediates)
    assert client.subjects is not None
    assert x509.UniformResourceIdentifier("spiffe://example.org/node1") in client.subjects
    with pytest.raises(VerificationError):
        builder.build_server_verifier(DNSName("other.example")).verify(leaf, intermediates)


@pytest.mark.parametrize("leaf_type", LEAF_KEY_TYPES)
def test_ed25519_ca_chain(cas: dict[str, CertificateAuthority], leaf_type: str) -> None:
    """cryptography's verifier follows the Web PKI, which forbids Ed25519 *signatures*: check the
    signatures directly here, and test_tls_handshake checks the chain with OpenSSL."""
    ca = cas["ed25519"]
    leaf, [inter] = chain_of(issue(ca, leaf_type))
    assert leaf.signature_hash_algorithm is None
    leaf.verify_directly_issued_by(inter)
    inter.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.root_pem))
    builder = PolicyBuilder().store(Store([x509.load_pem_x509_certificate(ca.root_pem)])).time(NOW)
    with pytest.raises(VerificationError, match="Forbidden"):
        builder.build_client_verifier().verify(leaf, [inter])


@pytest.mark.parametrize("ca_type", KEY_TYPES)
def test_tls_handshake(cas: dict[str, CertificateAuthority], ca_type: str, tmp_path: Path) -> None:
    """Real mutual TLS via OpenSSL: server_certificate() for the server, issue() for the client."""
    ca = cas[ca_type]
    server_chain, server_key = ca.server_certificate(["localhost", "127.0.0.1"], tmp_path / "tls")
    client_key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.issue(
        client_key.public_key(),
        uris=["spiffe://example.org/dev"],
        server_auth=False,
        not_before=datetime.now(UTC) - timedelta(minutes=1),
        not_after=datetime.now(UTC) + timedelta(hours=1),
    )
    (tmp_path / "client.pem").write_bytes(issued.chain_pem)
    (tmp_path / "client.key").write_bytes(
        client_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(server_chain, server_key)
    sctx.load_verify_locations(ca.root_path)
    sctx.verify_mode = ssl.CERT_REQUIRED
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(ca.root_path)
    cctx.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    for host in ("localhost", "127.0.0.1"):
        server_der, client_der = _handshake(sctx, cctx, host)
        assert client_der == issued.der
        assert server_der == x509.load_pem_x509_certificate(server_chain.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )


def _handshake(sctx: ssl.SSLContext, cctx: ssl.SSLContext, host: str) -> tuple[bytes, bytes]:
    """Handshake over memory BIOs (no sockets, no threads); returns (server, client) cert DER."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    client = cctx.wrap_bio(c_in, c_out, server_hostname=host)
    done = {server: False, client: False}
    for _ in range(20):
        for side in (client, server):
            if not done[side]:
                try:
                    side.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server sees the client certificate after its first read.
            client.write(b"x")
            s_in.write(c_out.read())
            assert server.read(1) == b"x"
            server_der, client_der = client.getpeercert(True), server.getpeercert(True)
            assert server_der and client_der
            return server_der, client_der
    raise AssertionError("handshake did not finish")


def test_leaf_profile_and_sans(ca: CertificateAuthority) -> None:
    long_id = "X" * 200  # forces the DER long-form length
    issued = issue(
        ca,
        "rsa-2048",
        dns_names=["a.example", "b.example", "a.example"],
        ip_addresses=[ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("2001:db8::1")],
        uris=["spiffe://example.org/ns/prod/sa/node1"],
        permanent_identifiers=["SN-0042", long_id],
        crl_url="http://ca.example/crl",
    )
    cert = x509.load_der_x509_certificate(issued.der)
    assert cert.serial_number == issued.serial and 0 < issued.serial < 2**128
    assert cert.subject == x509.Name([])
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (
        issued.not_before,
        issued.not_after,
    )
    assert issued.not_before.tzinfo is not None
    assert (
        cert.signature_hash_algorithm is not None and cert.signature_hash_algorithm.name == "sha256"
    )
    ext = cert.extensions
    san = ext.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # subject is empty
    assert san.value.get_values_for_type(x509.DNSName) == ["a.example", "b.example"]
    assert san.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"),
        ipaddress.ip_address("2001:db8::1"),
    ]
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/ns/prod/sa/node1"
    ]
    others = san.value.get_values_for_type(x509.OtherName)
    assert [o.type_id for o in others] == [PERMANENT_IDENTIFIER_OID] * 2
    assert [_decode_permanent_identifier(o.value) for o in others] == ["SN-0042", long_id]
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment  # RSA leaf
    assert not ku.value.key_cert_sign
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    assert ext.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    inter_ski = ca.intermediate_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert (
        ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        == inter_ski.value.digest
    )
    [dp] = ext.get_extension_for_class(x509.CRLDistributionPoints).value
    assert dp.full_name == [x509.UniformResourceIdentifier("http://ca.example/crl")]


def _decode_permanent_identifier(der: bytes) -> str:
    """Independent reader for SEQUENCE { UTF8String }: tag, length (short or long form), value."""

    def tlv(buf: bytes, tag: int) -> bytes:
        assert buf[0] == tag
        n, i = buf[1], 2
        if n & 0x80:
            n, i = int.from_bytes(buf[2 : 2 + (n & 0x7F)], "big"), 2 + (n & 0x7F)
        assert len(buf) == i + n
        return buf[i:]

    return tlv(tlv(der, 0x30), 0x0C).decode("utf-8")


def test_permanent_identifier_der() -> None:
    assert encode_permanent_identifier("ab") == b"\x30\x04\x0c\x02ab"
    assert encode_permanent_identifier("é") == b"\x30\x04\x0c\x02\xc3\xa9"
    assert encode_permanent_identifier("x" * 200)[:6] == b"\x30\x81\xcb\x0c\x81\xc8"
    assert encode_permanent_identifier("x" * 300)[:8] == b"\x30\x82\x01\x30\x0c\x82\x01\x2c"


def test_leaf_eku_and_key_usage_by_key(ca: CertificateAuthority) -> None:
    cert = x509.load_der_x509_certificate(issue(ca, "ed25519", server_auth=False).der)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_encipherment
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_oid(ExtensionOID.CRL_DISTRIBUTION_POINTS)


@pytest.mark.parametrize(
    ("ca_type", "hash_name"), [("ec-p256", "sha256"), ("ec-p384", "sha384"), ("rsa-2048", "sha256")]
)
def test_signature_hash(cas: dict[str, CertificateAuthority], ca_type: str, hash_name: str) -> None:
    cert = x509.load_der_x509_certificate(issue(cas[ca_type]).der)
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == hash_name


def test_serials_are_random(ca: CertificateAuthority) -> None:
    serials = {issue(ca).serial for _ in range(20)}
    assert len(serials) == 20 and all(0 < s < 2**128 for s in serials)


def test_issue_refuses_bad_requests(ca: CertificateAuthority) -> None:
    key = generate_key("ec-p256").public_key()
    ok: dict[str, Any] = {"not_before": NOW, "not_after": NOW + timedelta(days=1)}
    with pytest.raises(CAError, match="at least one name"):
        ca.issue(key, **ok)
    with pytest.raises(CAError, match="server_auth or client_auth"):
        ca.issue(key, dns_names=["a.example"], server_auth=False, client_auth=False, **ok)
    with pytest.raises(CAError, match="timezone-aware"):
        ca.issue(
            key,
            dns_names=["a.example"],
            not_before=datetime(2030, 1, 1),
            not_after=NOW,
        )
    with pytest.raises(CAError, match="not before"):
        ca.issue(key, dns_names=["a.example"], not_before=NOW, not_after=NOW)
    with pytest.raises(CAError, match="intermediate's expiry"):
        ca.issue(
            key,
            dns_names=["a.example"],
            not_before=NOW,
            not_after=NOW + timedelta(days=10 * 365),
        )


# --- server certificate --------------------------------------------------------------------------


def test_server_certificate_reuse_and_reissue(ca: CertificateAuthority, tmp_path: Path) -> None:
    out = tmp_path / "tls"
    names = ["localhost", "127.0.0.1", "::1"]
    chain_path, key_path = ca.server_certificate(names, out, now=NOW)
    assert (chain_path, key_path) == (out / "server.pem", out / "server.key")
    assert mode(key_path) == 0o600
    first = x509.load_pem_x509_certificates(chain_path.read_bytes())
    assert first[1] == ca.intermediate_cert
    san = first[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert list(first[0].extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]

    def serial() -> int:
        return x509.load_pem_x509_certificate(chain_path.read_bytes()).serial_number

    s0 = serial()
    ca.server_certificate(list(reversed(names)), out, now=NOW + timedelta(days=10))
    assert serial() == s0  # same names, 20 of 30 days left: reused
    ca.server_certificate(names, out, now=NOW + timedelta(days=21))
    s1 = serial()
    assert s1 != s0  # under a third of the lifetime left
    ca.server_certificate([*names, "node.example"], out, now=NOW + timedelta(days=21))
    s2 = serial()
    assert s2 != s1  # names changed
    other = CertificateAuthority.load_or_create(tmp_path / "other", now=NOW)
    other.server_certificate([*names, "node.example"], out, now=NOW + timedelta(days=21))
    assert serial() != s2  # issued by a different CA
    key_path.write_bytes(b"not a key")
    other.server_certificate([*names, "node.example"], out, now=NOW + timedelta(days=21))
    assert mode(key_path) == 0o600
    serialization.load_pem_private_key(key_path.read_bytes(), None)


# --- CRL -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ca_type", KEY_TYPES)
def test_crl(cas: dict[str, CertificateAuthority], ca_type: str) -> None:
    ca = cas[ca_type]
    a, b, c = (issue(ca).serial for _ in range(3))
    when = NOW - timedelta(hours=1)
    der = ca.crl(
        [(a, when, 1), (b, when, None), (c, when, 0)],
        crl_number=7,
        this_update=NOW,
        next_update=NOW + timedelta(days=1),
    )
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(ca.intermediate_cert.public_key())  # type: ignore[arg-type]
    assert crl.issuer == ca.intermediate_cert.subject
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert (
        aki.key_identifier
        == ca.intermediate_cert.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value.digest
    )
    entry = crl.get_revoked_certificate_by_serial_number(a)
    assert entry is not None and entry.revocation_date_utc == when
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        == x509.ReasonFlags.key_compromise
    )
    for serial in (b, c):  # no reason and "unspecified" are both written without reasonCode
        e = crl.get_revoked_certificate_by_serial_number(serial)
        assert e is not None and len(e.extensions) == 0
    assert crl.get_revoked_certificate_by_serial_number(12345) is None


def test_crl_rejects_bad_input(ca: CertificateAuthority) -> None:
    kw: dict[str, Any] = {
        "crl_number": 1,
        "this_update": NOW,
        "next_update": NOW + timedelta(days=1),
    }
    with pytest.raises(CAError, match="reason code 7"):
        ca.crl([(1, NOW, 7)], **kw)
    with pytest.raises(CAError, match="next_update"):
        ca.crl([], crl_number=1, this_update=NOW, next_update=NOW)
    empty = x509.load_der_x509_crl(ca.crl([], **kw))
    assert len(empty) == 0


def test_key_description() -> None:
    assert key_description(ec.generate_private_key(ec.SECP256R1()).public_key()) == "ECDSA P-256"
    assert key_description(ec.generate_private_key(ec.SECP384R1()).public_key()) == "ECDSA P-384"
    assert key_description(rsa.generate_private_key(65537, 2048).public_key()) == "RSA 2048"
    assert key_description(ed25519.Ed25519PrivateKey.generate().public_key()) == "Ed25519"


def test_keys_written_private_despite_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        CertificateAuthority.load_or_create(tmp_path / "ca", key_type="ed25519", now=NOW)
    finally:
        os.umask(old)
    assert mode(tmp_path / "ca" / "root.key") == 0o600
    assert mode(tmp_path / "ca") == 0o700
