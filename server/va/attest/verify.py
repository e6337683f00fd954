"""device-attest-01 end to end, as far as the VA goes: attObj -> verified bootstrap.

Order of checks: decode (malformed CBOR), format (unknown format), signature over the key
authorization by the x5c leaf (signature mismatch), chain to a manufacturer root at the
current time (expired / not yet valid / untrusted chain / revoked by CRL), then the device
id. What depends on stored state (deny list, decommissioned devices, rejoin, replayed
tokens, which identifier was asked for) is the RA's to check with the result.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization

from server.identity import device_id_of
from server.va.attest.chains import ManufacturerTrust
from server.va.attest.errors import attestation_failure
from server.va.attest.formats import FORMATS

MAX_ATT_OBJ = 32 * 1024


@dataclass(frozen=True)
class BootstrapEvidence:
    device_id: str
    manufacturer: str
    format: str
    serial: str  # bootstrap certificate serial, lowercase hex
    spki_sha256: str  # of the bootstrap public key: the operational key must differ
    not_after: datetime


def decode_att_obj(att_obj: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(att_obj, str) or not att_obj:
        raise attestation_failure("malformed CBOR", "attObj must be a base64url string")
    if len(att_obj) > MAX_ATT_OBJ * 4 // 3 + 4:
        raise attestation_failure("malformed CBOR", f"attObj is larger than {MAX_ATT_OBJ} bytes")
    try:
        raw = base64.urlsafe_b64decode(att_obj + "=" * (-len(att_obj) % 4))
    except (binascii.Error, ValueError):
        raise attestation_failure("malformed CBOR", "attObj is not base64url") from None
    try:
        obj = cbor2.loads(raw)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise attestation_failure("malformed CBOR", f"attObj does not decode: {exc}") from None
    if not isinstance(obj, dict):
        raise attestation_failure("malformed CBOR", "attObj is not a CBOR map")
    fmt, stmt = obj.get("fmt"), obj.get("attStmt")
    if not isinstance(fmt, str) or not isinstance(stmt, dict):
        raise attestation_failure("malformed CBOR", 'attObj needs "fmt" (text) and "attStmt" (map)')
    return fmt, stmt  # authData, if sent, is ignored (draft: "should be absent")


def verify_attestation(att_obj: Any, key_authorization: str, trust: ManufacturerTrust,
                       now: datetime, *, formats: tuple[str, ...] | None = None) -> BootstrapEvidence:
    fmt, stmt = decode_att_obj(att_obj)
    allowed = formats if formats is not None else tuple(FORMATS)
    verifier = FORMATS.get(fmt) if fmt in allowed else None
    if verifier is None:
        raise attestation_failure("unknown format", f"attestation format {fmt!r} is not accepted "
                                  f"(accepted: {', '.join(allowed)})")
    chain = verifier(stmt, key_authorization.encode())
    verified = trust.verify(chain, now)
    leaf = verified.leaf
    spki = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return BootstrapEvidence(
        device_id=device_id_of(leaf, verified.manufacturer.device_id_source),
        manufacturer=verified.manufacturer.name, format=fmt,
        serial=format(leaf.serial_number, "x"), spki_sha256=hashlib.sha256(spki).hexdigest(),
        not_after=leaf.not_valid_after_utc)
