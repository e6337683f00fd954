"""Stored state, as the RA sees it. Not wire objects: those come from `acme.messages`."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Status:
    PENDING = "pending"
    READY = "ready"
    PROCESSING = "processing"
    VALID = "valid"
    INVALID = "invalid"
    DEACTIVATED = "deactivated"
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Identifier:
    type: str  # "dns" | "ip" | "permanent-identifier"
    value: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "value": self.value}


@dataclass
class Account:
    id: str
    thumbprint: str
    jwk: dict[str, Any]
    status: str
    contact: list[str]
    created_at: datetime
    tos_agreed: bool = False
    eab_kid: str | None = None


@dataclass
class Challenge:
    id: str
    authz_id: str
    type: str
    token: str
    status: str
    validated: datetime | None = None
    error: dict[str, Any] | None = None


@dataclass
class Authorization:
    id: str
    account_id: str
    identifier: Identifier
    status: str
    expires: datetime
    wildcard: bool = False
    challenges: list[Challenge] = field(default_factory=list)


@dataclass
class Order:
    id: str
    account_id: str
    status: str
    identifiers: list[Identifier]
    authz_ids: list[str]
    expires: datetime
    profile: str
    not_before: datetime | None = None
    not_after: datetime | None = None
    error: dict[str, Any] | None = None
    certificate_serial: str | None = None
    replaces: str | None = None
    csr_der: bytes | None = None
    created_at: datetime | None = None


@dataclass
class Certificate:
    serial: str  # lowercase hex, no leading zeros stripped beyond int formatting
    account_id: str
    order_id: str | None
    chain_pem: str
    not_before: datetime
    not_after: datetime
    identifiers: list[Identifier]
    key_fingerprint: str
    status: str = Status.VALID
    revoked_at: datetime | None = None
    revocation_reason: int | None = None
    ari_id: str = ""
    device_id: str | None = None  # set for operational certificates of enrolled devices


@dataclass
class EabKey:
    kid: str
    hmac_key: bytes
    created_at: datetime
    account_id: str | None = None
    revoked: bool = False
    note: str = ""
    # Set when a device earned this key over bootstrap mTLS (the lego path): an account
    # bound with it is pre-authorized for exactly that device's identifiers.
    device_id: str | None = None
    bootstrap_spki: str | None = None
    bootstrap_serial: str | None = None


class NodeStatus:
    PENDING = "pending"  # attested, no certificate yet (or waiting for rejoin approval)
    ACTIVE = "active"
    DECOMMISSIONED = "decommissioned"


@dataclass
class Node:
    """One enrolled device: its manufacturing identity and the operational one we gave it."""

    device_id: str
    node_id: str
    manufacturer: str
    bootstrap_serial: str
    bootstrap_spki: str
    dns_name: str
    spiffe_id: str
    status: str
    created_at: datetime
    updated_at: datetime
    account_id: str | None = None
    pending_account_id: str | None = None  # rejoin = approve: the account waiting
    owner: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    current_serial: str | None = None
    last_issued_at: datetime | None = None


@dataclass(frozen=True)
class AuthzEvidence:
    authz_id: str
    device_id: str
    bootstrap_spki: str
    bootstrap_serial: str
