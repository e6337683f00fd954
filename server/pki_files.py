"""The CA directory: make, write and load the root and intermediate (certificates and keys).

Only `server.ca` imports this module. Files: root.pem, root.key, intermediate.pem,
intermediate.key. Keys are created 0600 (never briefly wider), the directory is 0700, and every
file is written to a temp name and renamed, root.pem last, so an interrupted creation is detected
on the next start instead of being half-used. Errors name the file at fault.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700
KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "ed25519")
CA_FILES = ("root.pem", "root.key", "intermediate.pem", "intermediate.key")
ROOT_LIFETIME = timedelta(days=3653)
INTERMEDIATE_LIFETIME = timedelta(days=1827)
CA_BACKDATE = timedelta(hours=1)  # tolerate verifiers whose clocks lag ours right after setup
_TMP_SUFFIX = ".tmp"

SignHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512


class CAError(Exception):
    """The CA cannot start or cannot do what was asked. Re-exported as `server.ca.CAError`."""


@dataclass(frozen=True)
class CAMaterial:
    """What the running CA needs. The root key is deliberately absent: it stays on disk."""

    root_cert: x509.Certificate
    root_path: Path
    intermediate_cert: x509.Certificate
    intermediate_key: CertificateIssuerPrivateKeyTypes


# --- keys and serials ----------------------------------------------------------------------------


def generate_key(key_type: str) -> CertificateIssuerPrivateKeyTypes:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type in ("rsa-2048", "rsa-3072"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise CAError(f"unknown CA key type {key_type!r}; expected one of {', '.join(KEY_TYPES)}")


def signature_hash(key: CertificateIssuerPrivateKeyTypes) -> SignHash | None:
    """Hash matched to the signing key's strength; EdDSA hashes internally (must be None)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_size: dict[int, SignHash] = {384: hashes.SHA384(), 521: hashes.SHA512()}
        return by_size.get(key.curve.key_size, hashes.SHA256())
    if isinstance(key, rsa.RSAPrivateKey):
        return hashes.SHA256()
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    raise CAError(f"unsupported signing key type {type(key).__name__}")


def new_serial() -> int:
    """128 random bits, positive (RFC 5280 §4.1.2.2: <= 20 octets; CA/B: >= 64 bits entropy)."""
    while True:
        if serial := secrets.randbits(128):
            return serial


def same_key(a: PublicKeyTypes, b: PublicKeyTypes) -> bool:
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(der, spki) == b.public_bytes(der, spki)


# --- creating the CA -----------------------------------------------------------------------------


def create_ca(ca_dir: Path, key_type: str, common_name: str, now: datetime) -> CAMaterial:
    """Make a root (pathlen 1) and an intermediate (pathlen 0) and write both to `ca_dir`."""
    root_key, inter_key = generate_key(key_type), generate_key(key_type)
    root_name = _cn(f"{common_name} Root CA")
    not_before = now - CA_BACKDATE
    root_cert = _ca_builder(root_name, root_name, root_key, 1, not_before, ROOT_LIFETIME).sign(
        root_key, signature_hash(root_key)
    )
    inter = _ca_builder(
        _cn(f"{common_name} Intermediate CA"),
        root_name,
        inter_key,
        0,
        not_before,
        INTERMEDIATE_LIFETIME,
    ).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
    )
    inter_cert = inter.sign(root_key, signature_hash(root_key))

    ensure_private_dir(ca_dir)
    contents = {  # commit order matters: root.pem last marks the CA complete
        "root.key": (private_key_pem(root_key), KEY_MODE),
        "intermediate.key": (private_key_pem(inter_key), KEY_MODE),
        "intermediate.pem": (certificate_pem(inter_cert), CERT_MODE),
        "root.pem": (certificate_pem(root_cert), CERT_MODE),
    }
    # Stage all four before renaming any: a crash while writing leaves only temp files.
    staged = {name: stage(ca_dir / name, data, mode) for name, (data, mode) in contents.items()}
    for name, tmp in staged.items():
        commit(tmp, ca_dir / name)
    log.info(
        "created %s CA in %s, root SHA-256 %s",
        key_type,
        ca_dir,
        root_cert.fingerprint(hashes.SHA256()).hex(),
    )
    return CAMaterial(root_cert, ca_dir / "root.pem", inter_cert, inter_key)


def _cn(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: CertificateIssuerPrivateKeyTypes,
    path_length: int,
    not_before: datetime,
    lifetime: timedelta,
) -> x509.CertificateBuilder:
    public = key.public_key()
    ku = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(new_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(ku, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


# --- loading the CA ------------------------------------------------------------------------------


def load_ca(ca_dir: Path, now: datetime) -> CAMaterial | None:
    """Load and cross-check the CA in `ca_dir`; None if the directory holds no CA files at all."""
    paths = {name: ca_dir / name for name in CA_FILES}
    if ca_dir.is_dir():
        remove_stale_temps(ca_dir, CA_FILES)
    present = {name for name, p in paths.items() if p.exists()}
    if not present:
        return None
    if "root.pem" not in present:
        raise CAError(
            f"{paths['root.pem']}: missing while {', '.join(sorted(present))} exist: CA creation "
            "was interrupted or the root was deleted; move these files away to create a new CA"
        )
    if missing := [str(paths[n]) for n in CA_FILES if n not in present]:
        raise CAError(f"{', '.join(missing)}: missing (CA directory {ca_dir} is incomplete)")
    root_cert, _ = load_pair(paths["root.pem"], paths["root.key"])
    _check_ca_cert(root_cert, root_cert, paths["root.pem"], "root certificate", now)
    inter_cert, inter_key = load_pair(paths["intermediate.pem"], paths["intermediate.key"])
    _check_ca_cert(
        inter_cert, root_cert, paths["intermediate.pem"], "intermediate certificate", now
    )
    return CAMaterial(root_cert, paths["root.pem"], inter_cert, inter_key)


def load_pair(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """A certificate and its private key, checked to belong together."""
    cert = load_certificate(cert_path)
    key = load_private_key(key_path)
    if not isinstance(
        key,
        (
            ec.EllipticCurvePrivateKey,
            rsa.RSAPrivateKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey,
        ),
    ):
        raise CAError(f"{key_path}: unsupported key type {type(key).__name__}")
    if not same_key(key.public_key(), cert.public_key()):
        raise CAError(f"{key_path}: private key does not match the certificate in {cert_path}")
    return cert, key


def _check_ca_cert(
    cert: x509.Certificate, issuer: x509.Certificate, path: Path, what: str, now: datetime
) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as e:
        how = "self-signed" if cert is issuer else "signed by the root certificate"
        raise CAError(f"{path}: {what} is not {how} ({e or 'bad signature'})") from e
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CAError(f"{path}: {what} is not a CA certificate (no BasicConstraints CA:TRUE)")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CAError(
            f"{path}: {what} is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d}"
            f" to {cert.not_valid_after_utc:%Y-%m-%d})"
        )


def load_certificate(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file (for chain files: the leaf)."""
    try:
        return x509.load_pem_x509_certificates(read_bytes(path))[0]
    except ValueError as e:
        raise CAError(f"{path}: not a PEM certificate file ({e})") from e


def load_private_key(path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(read_bytes(path), password=None)
    except TypeError as e:  # encrypted PEM: there is no passphrase source
        raise CAError(f"{path}: encrypted private keys are not supported") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CAError(f"{path}: not a PEM private key ({e})") from e


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CAError(f"{path}: cannot read: {e.strerror or e}") from e


def private_key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# --- crash-safe writes ---------------------------------------------------------------------------


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) and make it 0700: it holds unencrypted private keys."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(path, DIR_MODE)  # mkdir's mode is masked by umask and ignored if it existed
    except OSError as e:
        raise CAError(f"{path}: cannot create private directory: {e.strerror or e}") from e


def stage(path: Path, data: bytes, mode: int) -> Path:
    """Write `data` to a fresh temp file beside `path`; return its name for `commit`.

    O_CREAT|O_EXCL with the final mode: a key is never readable by others, not even between
    create and chmod, and we never write through a file (or symlink) someone else put there.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as e:
        raise CAError(f"{path}: cannot create temp file: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # contents durable before the rename makes them visible
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def commit(tmp: Path, path: Path) -> None:
    """Atomically rename a staged file into place and persist the directory entry."""
    try:
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)  # fsync the dir, or a crash may lose the rename
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CAError(f"{path}: cannot write: {e.strerror or e}") from e


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Readers see the old file or the whole new one, never a torn write."""
    commit(stage(path, data, mode), path)


def remove_stale_temps(directory: Path, names: tuple[str, ...]) -> None:
    """Delete temp files a crashed writer left behind (only our own naming pattern)."""
    for name in names:
        for tmp in directory.glob(f".{name}.*{_TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                tmp.unlink()
