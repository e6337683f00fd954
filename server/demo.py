"""A demo manufacturer, so a newcomer can enroll a device in one minute.

The demo root lives in the data dir (`<data-dir>/demo-manufacturer/`) and is trusted only
as a *manufacturer* root, by the one conf entry that names that folder: it never anchors
operational certificates or the gateway."""
from __future__ import annotations

import os
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from server import permanent_identifier

DEMO_DIR = "demo-manufacturer"


def _write_private(path: Path, key: Any) -> None:
    """0600 from the first byte: the file is created with that mode, never chmod-ed later."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.replace(tmp, path)


def _new_key(key_type: str) -> Any:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "rsa-2048":
        return rsa.generate_private_key(65537, 2048)
    raise ValueError(f"unknown key type {key_type}")


_CA_KEY_USAGE = x509.KeyUsage(digital_signature=False, content_commitment=False,
                              key_encipherment=False, data_encipherment=False,
                              key_agreement=False, key_cert_sign=True, crl_sign=True,
                              encipher_only=False, decipher_only=False)


def make_manufacturer_root(name: str, *, now: datetime | None = None,
                           years: int = 20) -> tuple[x509.Certificate, Any]:
    now = now or datetime.now(timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Manufacturing Root")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(secrets.randbits(127) | 1)
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=365 * years))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_manufacturer_intermediate(name: str, root: x509.Certificate, root_key: Any, *,
                                   now: datetime | None = None,
                                   years: int = 10) -> tuple[x509.Certificate, Any]:
    """A factory line's issuing CA under a manufacturer root (what most device makers run:
    the root stays offline, bootstrap certificates come from per-line intermediates)."""
    now = now or datetime.now(timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Factory Issuing CA")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(root.subject)
            .public_key(key.public_key()).serial_number(secrets.randbits(127) | 1)
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(min(now + timedelta(days=365 * years), root.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    return cert, key


def issue_bootstrap(device_id: str, issuer: x509.Certificate, issuer_key: Any, *,
                    key_type: str = "ec-p256", id_in: str = "serialNumber",
                    not_before: datetime | None = None, not_after: datetime | None = None,
                    key: Any = None) -> tuple[x509.Certificate, Any]:
    """An IEEE 802.1AR-style bootstrap (IDevID) certificate for one device."""
    now = datetime.now(timezone.utc)
    key = key or _new_key(key_type)
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                issuer.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
                                if issuer.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
                                else "Demo")]
    if id_in == "serialNumber":
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, device_id))
    builder = (x509.CertificateBuilder().subject_name(x509.Name(attrs))
               .issuer_name(issuer.subject).public_key(key.public_key())
               .serial_number(secrets.randbits(127) | 1)
               .not_valid_before(not_before or now - timedelta(minutes=5))
               .not_valid_after(not_after or now + timedelta(days=365 * 15))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   issuer_key.public_key()), critical=False))
    if id_in == "permanentIdentifier":
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.OtherName(
            permanent_identifier.OID, permanent_identifier.encode(device_id))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def ensure_demo_manufacturer(data_dir: Path) -> tuple[x509.Certificate, Any, Path]:
    """Load or create the demo manufacturer root in `<data-dir>/demo-manufacturer/`."""
    folder = data_dir / DEMO_DIR
    cert_path, key_path = folder / "root.pem", folder / "root.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        return cert, key, cert_path
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = make_manufacturer_root("nodetrust Demo Devices")
    _write_private(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, cert_path


def write_bootstrap(out_dir: Path, cert: x509.Certificate, key: Any,
                    chain: list[x509.Certificate] = ()) -> tuple[Path, Path]:  # type: ignore[assignment]
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / "bootstrap.pem", out_dir / "bootstrap.key"
    cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)
                                   for c in [cert, *chain]))
    _write_private(key_path, key)
    return cert_path, key_path
