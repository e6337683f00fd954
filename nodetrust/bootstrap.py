"""Open and sanity-check a device's bootstrap (IDevID) certificate + key on the node, so a
wrong file fails here with a clear message instead of as a `badAttestationStatement` later.

Shared by `nodetrust enroll` and the certbot plugin; no certbot import."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from nodetrust.attestation import load_bootstrap
from server.errors import ValidationFailure
from server.identity import device_id_of


class BootstrapError(ValueError):
    """`which` is "cert" or "key": the caller names its own option for that file."""

    def __init__(self, which: str, message: str) -> None:
        super().__init__(message)
        self.which = which


@dataclass(frozen=True)
class Bootstrap:
    key: Any
    chain_der: list[bytes]  # leaf first
    leaf: x509.Certificate
    device_id: str


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))


def open_bootstrap(cert_path: Path, key_path: Path, *,
                   now: datetime | None = None) -> Bootstrap:
    for which, path in (("cert", cert_path), ("key", key_path)):
        if not path.is_file():
            raise BootstrapError(which, f"{path} is not a file")
        if not os.access(path, os.R_OK):
            raise BootstrapError(which, f"{path} is not readable by this user")
    try:
        leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except ValueError as exc:
        raise BootstrapError("cert", f"{cert_path} holds no PEM certificate ({exc})") from None
    try:
        key, chain = load_bootstrap(cert_path, key_path)
    except (ValueError, TypeError) as exc:  # TypeError: encrypted, and no password unattended
        raise BootstrapError("key", f"{key_path} is not an unencrypted PEM private key "
                             f"({exc})") from None
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise BootstrapError("key", f"{key_path} is not the key of the bootstrap "
                             f"certificate {cert_path}")
    now = now or datetime.now(UTC)
    if now > leaf.not_valid_after_utc:
        raise BootstrapError("cert", f"the bootstrap certificate {cert_path} expired on "
                             f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if now < leaf.not_valid_before_utc:
        raise BootstrapError("cert", f"the bootstrap certificate {cert_path} is not valid "
                             f"before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
                             "(check this machine's clock)")
    try:
        device_id = device_id_of(leaf, "auto")
    except ValidationFailure as exc:
        raise BootstrapError("cert", f"{cert_path}: {exc.detail}") from None
    return Bootstrap(key=key, chain_der=chain, leaf=leaf, device_id=device_id)
