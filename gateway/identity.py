"""Node identity from the verified client certificate, parsed once per connection.

The TLS layer has already verified the chain to the operational CA; this module only reads what
the leaf says. The identity also carries the request headers the gateway adds (pre-rendered
bytes, so forwarding costs a concatenation) and a per-identity memo of route decisions
(see gateway.authz), which is why identities are shared across connections via `IdentityCache`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from urllib.parse import urlsplit

from cryptography import x509

__all__ = ["Identity", "IdentityCache", "parse_identity", "xfcc_value"]

NODE_ID_HEADER = "x-nodetrust-node-id"
SPIFFE_ID_HEADER = "x-nodetrust-spiffe-id"
XFCC_HEADER = "x-forwarded-client-cert"


@dataclass(eq=False, slots=True)
class Identity:
    serial: int
    not_before: float          # epoch seconds
    not_after: float
    spiffe_id: str             # "" when the leaf has no single spiffe:// URI SAN
    dns_names: tuple[str, ...]
    subject: str               # RFC 4514; "" for the empty subject our CA writes
    sha256: str                # hex of the DER: XFCC Hash
    node_id: str
    headers: bytes = b""       # identity headers as they go upstream, CRLF-terminated
    log_prefix: str = ""       # access-log JSON fields for this identity, pre-encoded
    # Route decisions for this identity: rule uid -> allowed; reset when labels change.
    memo: dict[int, bool] = field(default_factory=dict)
    memo_generation: int = -1


def _clean(value: str) -> str:
    # Header values must not carry CR/LF or other controls, whatever a certificate contains.
    return "".join(c for c in value if 0x20 <= ord(c) < 0x7F)


def _xfcc_quote(value: str) -> str:
    # Envoy: values containing , ; = are double-quoted, with " and \ backslash-escaped inside.
    if any(c in value for c in ',;="'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def xfcc_value(ident: Identity) -> str:
    """Envoy's X-Forwarded-Client-Cert element for one certificate (Subject is always quoted)."""
    subject = ident.subject.replace("\\", "\\\\").replace('"', '\\"')
    parts = [f"Hash={ident.sha256}", f'Subject="{subject}"']
    if ident.spiffe_id:
        parts.append(f"URI={_xfcc_quote(ident.spiffe_id)}")
    parts += [f"DNS={_xfcc_quote(d)}" for d in ident.dns_names]
    return _clean(";".join(parts))


def _node_id(spiffe_id: str, dns_names: tuple[str, ...]) -> str:
    if spiffe_id:
        last = urlsplit(spiffe_id).path.rstrip("/").rpartition("/")[2]
        if last:
            return last
    return dns_names[0].split(".", 1)[0] if dns_names else ""


def parse_identity(der: bytes) -> Identity:
    """Read the leaf's identity. Raises ValueError if the DER does not parse."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        dns = tuple(d.lower() for d in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        uris, dns = [], ()
    # SPIFFE X.509-SVID: exactly one URI SAN. Two URIs make the identity ambiguous: use none.
    spiffe = uris[0] if len(uris) == 1 and uris[0].lower().startswith("spiffe://") else ""
    ident = Identity(
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        spiffe_id=spiffe,
        dns_names=dns,
        subject=cert.subject.rfc4514_string(),
        sha256=hashlib.sha256(der).hexdigest(),
        node_id=_node_id(spiffe, dns),
    )
    lines = [f"{XFCC_HEADER}: {xfcc_value(ident)}",
             f"{NODE_ID_HEADER}: {_clean(ident.node_id)}",
             f"{SPIFFE_ID_HEADER}: {_clean(ident.spiffe_id)}"]
    ident.headers = ("\r\n".join(lines) + "\r\n").encode("latin-1")
    ident.log_prefix = (f'"node":{encode_basestring(ident.node_id)},'
                        f'"spiffe":{encode_basestring(spiffe)},"serial":"{ident.serial:x}",')
    return ident


class IdentityCache:
    """DER -> Identity, so a node opening many connections is parsed once (bounded; reset when full)."""

    def __init__(self, max_size: int = 4096) -> None:
        self._items: dict[bytes, Identity] = {}
        self._max = max_size

    def get(self, der: bytes) -> Identity:
        ident = self._items.get(der)
        if ident is None:
            ident = parse_identity(der)
            if len(self._items) >= self._max:
                self._items.clear()  # a rebuild costs one parse per live node: cheap, simple
            self._items[der] = ident
        return ident
