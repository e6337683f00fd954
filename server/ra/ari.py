"""ACME Renewal Information (RFC 9773): certificate ids and suggested renewal windows."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from server.errors import AcmeProblem, malformed
from server.jws import b64d, b64e
from server.models import Certificate, Status
from server.store.repo import Store


def serial_content_octets(serial: int) -> bytes:
    """DER INTEGER content of a positive serial: minimal, with a 0x00 when the top bit is set."""
    return serial.to_bytes(serial.bit_length() // 8 + 1, "big")


def cert_id(cert: x509.Certificate) -> str:
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    if aki.key_identifier is None:
        raise ValueError("certificate has no AKI keyIdentifier")
    return make_cert_id(aki.key_identifier, cert.serial_number)


def make_cert_id(aki_key_identifier: bytes, serial: int) -> str:
    return f"{b64e(aki_key_identifier)}.{b64e(serial_content_octets(serial))}"


def parse_cert_id(value: str) -> tuple[bytes, int]:
    """(AKI keyIdentifier, serial) of an ARI id; `malformed` when it is not one."""
    aki_b64, dot, serial_b64 = value.partition(".")
    if not dot or not aki_b64 or not serial_b64 or "=" in value:
        raise malformed(f"{value!r} is not an ARI certificate id (base64url(AKI).base64url(serial))")
    try:
        aki, serial = b64d(aki_b64, "ARI AKI"), b64d(serial_b64, "ARI serial")
    except AcmeProblem:
        raise malformed(f"{value!r} is not an ARI certificate id") from None
    if not serial or serial[0] & 0x80:
        raise malformed("ARI serial must be a positive DER integer")
    return aki, int.from_bytes(serial, "big")


@dataclass(frozen=True)
class RenewalWindow:
    start: datetime
    end: datetime
    retry_after: int  # seconds
    explanation: str | None = None


def renewal_window(cert: Certificate, now: datetime) -> RenewalWindow:
    """Renew in the last third of the lifetime (two thirds to five sixths), at once if revoked.

    Clients pick a random moment inside the window, which spreads a fleet's renewals."""
    lifetime = cert.not_after - cert.not_before
    retry = int(max(60, min(6 * 3600, lifetime.total_seconds() / 8)))
    if cert.status == Status.REVOKED:
        return RenewalWindow(now - timedelta(hours=1), now - timedelta(seconds=1), retry,
                             "the certificate was revoked: renew now")
    start = cert.not_before + lifetime * 2 / 3
    end = cert.not_before + lifetime * 5 / 6
    return RenewalWindow(start, end, retry)


def lookup(store: Store, ari_id: str) -> Certificate:
    parse_cert_id(ari_id)
    cert = store.get_certificate_by_ari_id(ari_id)
    if cert is None:
        raise AcmeProblem("malformed", f"no certificate with ARI id {ari_id!r}", status=404)
    return cert


