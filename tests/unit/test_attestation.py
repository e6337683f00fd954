"""device-attest-01 verification core: every failure names its check."""
from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nodetrust.attestation import build_att_obj
from server.demo import issue_bootstrap, make_manufacturer_root
from server.errors import ValidationFailure
from server.identity import IdentitySettings, node_identity
from server.va.attest.chains import Manufacturer, ManufacturerTrust
from server.va.attest.verify import verify_attestation

KEY_AUTHZ = "tok3n-abcdefghijklmnopqrstuvwxyz0123456789AB.thumbprint-of-account-key"
NOW = datetime.now(timezone.utc)


def der(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def maker() -> tuple[x509.Certificate, Any]:
    return make_manufacturer_root("Acme Devices")


@pytest.fixture(scope="module")
def trust(maker: tuple[x509.Certificate, Any]) -> ManufacturerTrust:
    return ManufacturerTrust([Manufacturer("acme-devices", (maker[0],))])


def failure(att_obj: Any, trust: ManufacturerTrust, key_authz: str = KEY_AUTHZ) -> str:
    with pytest.raises(ValidationFailure) as exc:
        verify_attestation(att_obj, key_authz, trust, NOW)
    assert exc.value.code == "badAttestationStatement"
    return exc.value.detail


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "ed25519", "rsa-2048"])
def test_valid_statement_yields_device(maker: Any, trust: ManufacturerTrust, key_type: str) -> None:
    cert, key = issue_bootstrap("SN-0042", *maker, key_type=key_type)
    ev = verify_attestation(build_att_obj(KEY_AUTHZ, key, [der(cert)]), KEY_AUTHZ, trust, NOW)
    assert (ev.device_id, ev.manufacturer, ev.format) == ("SN-0042", "acme-devices", "step")
    assert ev.serial == format(cert.serial_number, "x")


def test_packed_format_and_permanent_identifier_san(maker: Any, trust: ManufacturerTrust) -> None:
    cert, key = issue_bootstrap("PID-77", *maker, id_in="permanentIdentifier")
    ev = verify_attestation(build_att_obj(KEY_AUTHZ, key, [der(cert)], fmt="packed"), KEY_AUTHZ,
                            trust, NOW)
    assert ev.device_id == "PID-77" and ev.format == "packed"


def test_chain_through_an_intermediate(maker: Any) -> None:
    root, root_key = maker
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Line 3 CA")]))
             .issuer_name(root.subject).public_key(inter_key.public_key()).serial_number(7)
             .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=900))
             .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
             .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                            critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(inter_key.public_key()), False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                            False)
             .sign(root_key, hashes.SHA256()))
    cert, key = issue_bootstrap("SN-1", inter, inter_key)
    trust = ManufacturerTrust([Manufacturer("acme", (root,))])
    ev = verify_attestation(build_att_obj(KEY_AUTHZ, key, [der(cert), der(inter)]), KEY_AUTHZ,
                            trust, NOW)
    assert ev.device_id == "SN-1"
    assert "untrusted chain" in failure(build_att_obj(KEY_AUTHZ, key, [der(cert)]), trust)


def _att(obj: Any) -> str:
    return base64.urlsafe_b64encode(cbor2.dumps(obj)).rstrip(b"=").decode()


@pytest.mark.parametrize("att_obj, check", [
    ("!!!not-base64!!!", "malformed CBOR"),
    (base64.urlsafe_b64encode(b"\xff\x00garbage").decode(), "malformed CBOR"),
    (_att([1, 2, 3]), "malformed CBOR"),
    (_att({"attStmt": {}}), "malformed CBOR"),
    (_att({"fmt": "tpm", "attStmt": {}}), "unknown format"),
    (_att({"fmt": "packed", "attStmt": {"alg": -7, "sig": b"x"}}), "malformed attStmt"),
    (_att({"fmt": "packed", "attStmt": {"alg": -7, "sig": b"x", "x5c": [b"not der"]}}),
     "malformed attStmt"),
    (12, "malformed CBOR"),
])
def test_malformed_statements(att_obj: Any, check: str, trust: ManufacturerTrust) -> None:
    assert failure(att_obj, trust).startswith(check)


def test_signature_over_other_data_is_refused(maker: Any, trust: ManufacturerTrust) -> None:
    cert, key = issue_bootstrap("SN-2", *maker)
    att = build_att_obj("another-token.other-account", key, [der(cert)])
    assert failure(att, trust).startswith("signature mismatch")


def test_unsupported_cose_algorithm(maker: Any, trust: ManufacturerTrust) -> None:
    cert, _ = issue_bootstrap("SN-2", *maker)
    att = _att({"fmt": "step", "attStmt": {"alg": -65535, "sig": b"x", "x5c": [der(cert)]}})
    assert "COSE algorithm -65535 is not supported" in failure(att, trust)


def test_other_manufacturer_is_untrusted(trust: ManufacturerTrust) -> None:
    other = make_manufacturer_root("Unknown Vendor")
    cert, key = issue_bootstrap("SN-3", *other)
    assert failure(build_att_obj(KEY_AUTHZ, key, [der(cert)]), trust).startswith("untrusted chain")


def test_expired_and_not_yet_valid(maker: Any, trust: ManufacturerTrust) -> None:
    old, k1 = issue_bootstrap("SN-4", *maker, not_before=NOW - timedelta(days=30),
                              not_after=NOW - timedelta(days=1))
    assert failure(build_att_obj(KEY_AUTHZ, k1, [der(old)]), trust).startswith(
        "bootstrap certificate expired")
    future, k2 = issue_bootstrap("SN-5", *maker, not_before=NOW + timedelta(days=1),
                                 not_after=NOW + timedelta(days=30))
    assert failure(build_att_obj(KEY_AUTHZ, k2, [der(future)]), trust).startswith(
        "bootstrap certificate not yet valid")


def test_revoked_by_manufacturer_crl(maker: Any) -> None:
    root, root_key = maker
    cert, key = issue_bootstrap("SN-6", root, root_key)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(root.subject)
           .last_update(NOW - timedelta(hours=1)).next_update(NOW + timedelta(days=7))
           .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                    .serial_number(cert.serial_number)
                                    .revocation_date(NOW - timedelta(hours=1)).build())
           .sign(root_key, hashes.SHA256()))
    trust = ManufacturerTrust([Manufacturer("acme", (root,), crls=(crl,))])
    assert failure(build_att_obj(KEY_AUTHZ, key, [der(cert)]), trust).startswith(
        "bootstrap certificate revoked")


def test_node_identity_templates() -> None:
    ident = node_identity("SN:AB_12/x", IdentitySettings())
    assert ident.node_id == "sn-ab-12-x"
    assert ident.dns_name == "sn-ab-12-x.nodes.nodetrust.internal"
    assert ident.spiffe_id == "spiffe://nodetrust.internal/node/sn-ab-12-x"


def test_ps256_statement(maker: Any, trust: ManufacturerTrust) -> None:
    from cryptography.hazmat.primitives.asymmetric import padding

    cert, key = issue_bootstrap("SN-PSS", *maker, key_type="rsa-2048")
    sig = key.sign(KEY_AUTHZ.encode(), padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                   salt_length=padding.PSS.DIGEST_LENGTH),
                   hashes.SHA256())
    att = _att({"fmt": "packed", "attStmt": {"alg": -37, "sig": sig, "x5c": [der(cert)]}})
    assert verify_attestation(att, KEY_AUTHZ, trust, NOW).device_id == "SN-PSS"
    # The same signature presented as RS256 (PKCS#1 v1.5) must not verify.
    bad = _att({"fmt": "packed", "attStmt": {"alg": -257, "sig": sig, "x5c": [der(cert)]}})
    assert failure(bad, trust).startswith("signature mismatch")
