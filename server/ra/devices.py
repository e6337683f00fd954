"""Devices: device-attest-01 results become nodes, under the rejoin, deny-list and
decommission rules. The VA (`server.va.attest`) proves what the bootstrap certificate
says; this module decides what that buys, from policy and stored state."""
from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from nodetrust.challenges import DEVICE_ATTEST_01, PERMANENT_IDENTIFIER
from server.errors import AcmeProblem, ValidationFailure
from server.identity import NodeIdentity, device_id_of, node_identity
from server.models import (
    Account,
    Authorization,
    AuthzEvidence,
    Challenge,
    EabKey,
    Node,
    NodeStatus,
    Order,
)
from server.ra.deps import Deps
from server.va.attest.chains import ManufacturerTrust, TrustLoadError, load_trust
from server.va.attest.errors import BAD_ATTESTATION, attestation_failure
from server.va.attest.formats import FORMATS
from server.va.attest.verify import BootstrapEvidence, decode_att_obj, verify_attestation

log = logging.getLogger("nodetrust.devices")

DEVICE_IDENTIFIER_TYPES = (PERMANENT_IDENTIFIER,)


@dataclass(frozen=True)
class DevicePlan:
    """What finalize issues for an order won by attestation."""

    node: Node
    identity: NodeIdentity
    bootstrap_spki: str


class DeviceService:
    def __init__(self, deps: Deps) -> None:
        self.d = deps
        settings = deps.cfg.identity
        probe = node_identity("n", settings).dns_name  # "n.nodes.nodetrust.internal"
        self.device_domain = probe[1:]  # ".nodes.nodetrust.internal"
        self.trust = self._load_trust()

    def reload_trust(self, actor: str = "server") -> None:
        """Read manufacturer roots and CRLs again (SIGHUP). A bad file raises TrustLoadError
        and leaves the previous trust in force. Either way the attempt is audited: who is
        trusted to mint device identities is policy."""
        try:
            self.trust = self._load_trust()
        except TrustLoadError as exc:
            self.d.store.audit_nowait("policy.reload_failed", actor, "manufacturer-roots",
                                      {"error": str(exc)})
            raise
        self.d.store.audit_nowait("policy.reloaded", actor, "manufacturer-roots", {
            "manufacturers": sorted(m.name for m in self.trust.manufacturers)})

    def _load_trust(self) -> ManufacturerTrust:
        att = self.d.cfg.attestation
        return load_trust(
            att.roots_dir, demo_dir=self.d.cfg.data_dir / "demo-manufacturer"
            if att.demo_manufacturer else None, crl_paths=att.crls,
            default_source=att.device_id_source, sources=dict(att.device_id_sources))

    @property
    def enabled(self) -> bool:
        return self.d.cfg.attestation.enabled

    def is_device_identifier(self, ident_type: str, value: str) -> bool:
        return self.enabled and (ident_type in DEVICE_IDENTIFIER_TYPES or (
            ident_type == "dns" and value.endswith(self.device_domain)))

    async def attest(self, account: Account, chall: Challenge, authz: Authorization,
                     payload: dict[str, Any]) -> None:
        """Verify the attestation and record the outcome on the (processing) challenge."""
        try:
            evidence = verify_attestation(
                payload.get("attObj"), f"{chall.token}.{account.thumbprint}", self.trust,
                self.d.now(), formats=self.d.cfg.attestation.formats)
            node, approved = self._decide(account, authz, evidence)
        except ValidationFailure as f:
            error = f.to_json()
            error["identifier"] = authz.identifier.to_json()
            await self.d.store.write(self.d.store.finish_challenge, chall.id, authz.id, valid=False,
                                     when=self.d.now(), error=error)
            log.info("device-attest-01 for %s refused: %s", authz.identifier.value, f.detail)
            self.d.telemetry.challenge_result(DEVICE_ATTEST_01, f.code)
            self.d.telemetry.device_enrollment(_format_label(payload.get("attObj")),
                                               _check_label(f))
            return
        await self.d.store.write(
            self.d.store.record_attestation, node,
            AuthzEvidence(authz.id, evidence.device_id, evidence.spki_sha256, evidence.serial),
            chall.id, when=self.d.now(), approved=approved)
        if approved:
            self.d.telemetry.challenge_result(DEVICE_ATTEST_01, None)
        self.d.telemetry.device_enrollment(_format_label(payload.get("attObj")),
                                           None if approved else "awaiting approval")
        log.info("device %s (%s, bootstrap %s) attested for account %s%s", evidence.device_id,
                 evidence.manufacturer, evidence.serial, account.id,
                 "" if approved else ": rejoin waits for `nodetrust nodes approve`")

    def _decide(self, account: Account, authz: Authorization,
                ev: BootstrapEvidence) -> tuple[Node, bool]:
        identity = node_identity(ev.device_id, self.d.cfg.identity)
        ident = authz.identifier
        expected = ev.device_id if ident.type in DEVICE_IDENTIFIER_TYPES else identity.dns_name
        if ident.value != expected:
            raise attestation_failure("identifier mismatch", f"the bootstrap certificate is for "
                                      f"device {ev.device_id!r} ({ident.type} {expected!r}), not "
                                      f"{ident.value!r}")
        return self._admit(ev, identity, account.id)

    def _admit(self, ev: BootstrapEvidence, identity: NodeIdentity,
               account_id: str | None) -> tuple[Node, bool]:
        """Deny list, decommission and rejoin rules; (node to record, approved now).
        `account_id` None: the account is not known yet (bootstrap EAB), so any earlier
        enrollment counts as a rejoin."""
        denied = self.d.store.denied_bootstrap(ev.device_id, ev.serial)
        if denied is not None:
            raise attestation_failure("bootstrap certificate revoked", f"{denied!r} is on the "
                                      "operator's bootstrap deny list (`nodetrust bootstrap allow` "
                                      "lifts it)")
        now = self.d.now()
        node = self.d.store.get_node(ev.device_id)
        if node is not None and node.status == NodeStatus.DECOMMISSIONED:
            raise attestation_failure("device decommissioned", f"device {ev.device_id!r} was "
                                      "decommissioned; `nodetrust nodes readmit` lets it enroll again")
        approved, pending = True, None
        if node is not None and node.account_id is not None and node.account_id != account_id:
            rule = self.d.cfg.attestation.rejoin
            if rule == "deny":
                raise attestation_failure("rejoin refused", f"device {ev.device_id!r} is enrolled "
                                          "under another account (rule attestation.rejoin = deny)")
            if rule == "approve":
                if account_id is None:
                    raise attestation_failure(
                        "rejoin refused", f"device {ev.device_id!r} is enrolled under another "
                        "account and attestation.rejoin = approve: enroll with device-attest-01 "
                        "so an operator can approve the new account")
                approved, pending = False, account_id
        return Node(device_id=ev.device_id, node_id=identity.node_id, manufacturer=ev.manufacturer,
                    bootstrap_serial=ev.serial, bootstrap_spki=ev.spki_sha256,
                    dns_name=identity.dns_name, spiffe_id=identity.spiffe_id,
                    status=node.status if node else NodeStatus.PENDING,
                    created_at=node.created_at if node else now, updated_at=now,
                    account_id=node.account_id if node else None,
                    pending_account_id=pending), approved

    async def eab_for_bootstrap(self, leaf: x509.Certificate,
                                intermediates: Sequence[x509.Certificate] = (),
                                ) -> tuple[EabKey, NodeIdentity]:
        """The lego path: a bootstrap certificate shown over mTLS earns EAB credentials whose
        account is pre-authorized for exactly this device's identifiers. mTLS proved the key;
        the chain (with the intermediates the device sent) is checked again here, with CRLs,
        the deny list and the node rules."""
        now = self.d.now()
        verified = self.trust.verify([leaf, *intermediates], now)
        spki = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        ev = BootstrapEvidence(
            device_id=device_id_of(leaf, verified.manufacturer.device_id_source),
            manufacturer=verified.manufacturer.name, format="mtls",
            serial=format(leaf.serial_number, "x"), spki_sha256=hashlib.sha256(spki).hexdigest(),
            not_after=leaf.not_valid_after_utc)
        identity = node_identity(ev.device_id, self.d.cfg.identity)
        node, _ = self._admit(ev, identity, None)
        key = EabKey(kid="dev-" + secrets.token_urlsafe(12), hmac_key=secrets.token_bytes(32),
                     created_at=now, note=f"bootstrap mTLS: device {ev.device_id}",
                     device_id=ev.device_id, bootstrap_spki=ev.spki_sha256,
                     bootstrap_serial=ev.serial)
        await self.d.store.write(self.d.store.insert_eab_key, key, node)
        log.info("device %s (%s) earned EAB key %s over bootstrap mTLS", ev.device_id,
                 ev.manufacturer, key.kid)
        return key, identity

    def preauthorized_device(self, account: Account) -> EabKey | None:
        """The device an account is bound to through a bootstrap-earned EAB key."""
        if not self.enabled or account.eab_kid is None:
            return None
        key = self.d.store.get_eab_key(account.eab_kid)
        return key if key is not None and key.device_id and key.bootstrap_spki else None

    def plan(self, order: Order) -> DevicePlan | None:
        """The device an order is for, when its authorizations were won by attestation."""
        evidence = self.d.store.evidence_for(order.authz_ids)
        if not evidence:
            return None
        devices = {e.device_id for e in evidence}
        if len(devices) != 1 or len(evidence) != len(order.authz_ids):
            raise AcmeProblem("badCSR", "an order for a device must name that one device only")
        ev = evidence[0]
        node = self.d.store.get_node(ev.device_id)
        if node is None or node.status == NodeStatus.DECOMMISSIONED:
            raise AcmeProblem("unauthorized", f"device {ev.device_id!r} was decommissioned",
                              status=403)
        denied = self.d.store.denied_bootstrap(ev.device_id, ev.bootstrap_serial)
        if denied is not None:  # denied between attestation and finalize
            raise AcmeProblem("unauthorized", f"{denied!r} is on the bootstrap deny list",
                              status=403)
        return DevicePlan(node=node, identity=node_identity(ev.device_id, self.d.cfg.identity),
                          bootstrap_spki=ev.bootstrap_spki)

    async def supersede(self, device_id: str, keep_serial: str, previous_account: str | None,
                        account_id: str) -> None:
        """Rejoin (allow or approved): the device's certificates from its previous account
        are revoked as superseded once the new one is issued."""
        if previous_account is None or previous_account == account_id:
            return
        for serial in self.d.store.valid_certificates_of_device(device_id):
            cert = self.d.store.get_certificate(serial)
            if serial != keep_serial and cert is not None and cert.account_id != account_id:
                await self.d.store.write(self.d.store.revoke_certificate, serial, reason=4,
                                         when=self.d.now(), via="rejoin")
                log.info("rejoin of %s: revoked %s (superseded)", device_id, serial)


def _format_label(att_obj: Any) -> str:
    """The attestation format as a metrics label: a known format name, else "other"."""
    try:
        fmt, _ = decode_att_obj(att_obj)
    except ValidationFailure:
        return "undecodable"
    return fmt if fmt in FORMATS else "other"


def _check_label(failure: ValidationFailure) -> str:
    """Which check refused ("signature mismatch", "device decommissioned", ...): the text
    before the colon of an attestation failure; bounded, since checks are code literals."""
    check, sep, _ = failure.detail.partition(":")
    if failure.code != BAD_ATTESTATION or not sep or len(check) > 40:
        return failure.code
    return check
