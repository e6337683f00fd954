"""RFC 9773 ACME Renewal Information, node side: the certificate id and the window."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime

from acme import client, messages
from cryptography import x509


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cert_id(cert: x509.Certificate) -> str:
    """base64url(AKI keyIdentifier) "." base64url(serial DER content octets)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    if aki.key_identifier is None:
        raise ValueError("the certificate's AKI has no keyIdentifier: ARI cannot name it")
    serial = cert.serial_number
    # Minimal two's complement: one extra byte when the top bit is set (positive INTEGER).
    return f"{_b64(aki.key_identifier)}.{_b64(serial.to_bytes(serial.bit_length() // 8 + 1, 'big'))}"


@dataclass(frozen=True)
class RenewalWindow:
    start: datetime
    end: datetime
    from_ari: bool = True


def fetch_window(acme: client.ClientV2, cert: x509.Certificate) -> RenewalWindow | None:
    """The server's suggested window for `cert`; None when the directory has no renewalInfo.
    A plain GET (RFC 9773 §4.1), no JWS."""
    base = acme.directory.to_partial_json().get("renewalInfo")
    if not base:
        return None
    resp = acme.net.get(f"{base.rstrip('/')}/{cert_id(cert)}", content_type="application/json")
    window = messages.RenewalInfo.from_json(resp.json()).suggested_window
    return RenewalWindow(_utc(window.start), _utc(window.end))


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)
