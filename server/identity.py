"""Node identity from policy: device id -> node id, DNS name, SPIFFE ID. Pure functions.

The operational certificate's identity comes from these templates, never from what a
CSR asks for (SPIFFE X.509-SVID: exactly one URI SAN, `spiffe://<trust-domain>/<path>`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.x509.oid import NameOID

from server import permanent_identifier
from server.va.attest.errors import attestation_failure

_UNSAFE = re.compile(r"[^a-z0-9-]+")
DEVICE_ID_SOURCES = ("auto", "serialNumber", "permanentIdentifier")


@dataclass(frozen=True)
class IdentitySettings:
    trust_domain: str = "nodetrust.internal"
    dns_template: str = "{node_id}.nodes.{trust_domain}"
    spiffe_template: str = "spiffe://{trust_domain}/node/{node_id}"
    lifetime: timedelta = timedelta(hours=24)
    include_permanent_identifier: bool = True  # off: keep the device serial out of certificates


@dataclass(frozen=True)
class NodeIdentity:
    device_id: str
    node_id: str
    dns_name: str
    spiffe_id: str


def node_id_of(device_id: str) -> str:
    """Lowercase and DNS-safe (one label): 'SN:AB_12/x' -> 'sn-ab-12-x'."""
    node_id = _UNSAFE.sub("-", device_id.lower()).strip("-")[:63].rstrip("-")
    if not node_id:
        raise attestation_failure("device id", f"device id {device_id!r} has no usable characters")
    return node_id


def node_identity(device_id: str, settings: IdentitySettings) -> NodeIdentity:
    node_id = node_id_of(device_id)
    values = {"node_id": node_id, "device_id": node_id, "trust_domain": settings.trust_domain}
    return NodeIdentity(device_id=device_id, node_id=node_id,
                        dns_name=settings.dns_template.format(**values),
                        spiffe_id=settings.spiffe_template.format(**values))


def device_id_of(leaf: x509.Certificate, source: str) -> str:
    """IEEE 802.1AR style: subject serialNumber, or the RFC 4043 permanentIdentifier SAN."""
    if source in ("auto", "permanentIdentifier"):
        try:
            ids = permanent_identifier.from_certificate(leaf)
        except ValueError as exc:
            raise attestation_failure("device id", f"permanentIdentifier SAN is malformed: "
                                      f"{exc}") from None
        if ids:
            return ids[0]
        if source == "permanentIdentifier":
            raise attestation_failure("device id", "the bootstrap certificate has no "
                                      "permanentIdentifier SAN (manufacturer device_id_source)")
    serials = leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    if serials and str(serials[0].value).strip():
        return str(serials[0].value).strip()
    raise attestation_failure("device id", "the bootstrap certificate names no device: no "
                              "subject serialNumber" + (" and no permanentIdentifier SAN"
                                                        if source == "auto" else ""))
