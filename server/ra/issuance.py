"""Finalize (RFC 8555 §7.4): check the CSR against the order and policy, have the CA
sign, store certificate and order state in one transaction.

The order moves to `processing` (with its CSR) in its own commit before signing, so a
crash between the two is finished by `resume()` on the next start: no order is left
half-done and no certificate is issued twice.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from datetime import datetime
from typing import Any

from server.ca import CAError, IssuedCertificate
from server.csr import CheckedCSR, check_csr
from server.errors import AcmeProblem, malformed
from server.jws import b64d, jwk_of_public_key, thumbprint
from server.models import Account, Certificate, Identifier, Order, Status
from server.ra.ari import make_cert_id
from server.ra.deps import Deps
from server.ra.devices import DevicePlan, DeviceService

log = logging.getLogger("nodetrust.ra")



def serial_hex(serial: int) -> str:
    return format(serial, "x")


class IssuanceService:
    def __init__(self, deps: Deps, crl_url: str | None = None,
                 devices: DeviceService | None = None) -> None:
        self.d = deps
        self.crl_url = crl_url
        self.devices = devices

    async def finalize(self, account: Account, order: Order, payload: dict[str, Any]) -> Order:
        started = time.monotonic()
        if order.status != Status.READY:
            raise AcmeProblem("orderNotReady", f"the order is {order.status}, not ready: "
                              "finalize after every authorization is valid", status=403)
        csr_b64 = payload.get("csr")
        if not isinstance(csr_b64, str):
            raise malformed("finalize needs a csr (base64url DER)")
        csr_der = b64d(csr_b64, "csr")
        not_before, not_after = self._validity(order)
        if order.not_after is not None and not_after <= max(not_before, self.d.now()):
            # e.g. an order with notAfter that was finalized too late: it can never succeed.
            error = {"type": "urn:ietf:params:acme:error:malformed",
                     "detail": f"the order's notAfter {not_after.isoformat()} has passed"}
            await self.d.store.write(self.d.store.set_order_status, order.id, Status.INVALID,
                                     expect=(Status.PENDING, Status.READY), error=error)
            raise malformed(error["detail"] + "; place a new order")
        plan = self.devices.plan(order) if self.devices is not None else None
        checked = self._check_device(order, csr_der, plan) if plan else self._check(
            account, order, csr_der)
        if not await self.d.store.write(self.d.store.set_order_status, order.id,
                                        Status.PROCESSING, expect=(Status.PENDING, Status.READY),
                                        csr_der=csr_der):
            raise AcmeProblem("orderNotReady", "the order is being finalized already", status=403)
        return await self._issue(order, checked, plan, started=started)

    def _check(self, account: Account, order: Order, csr_der: bytes) -> CheckedCSR:
        checked = check_csr(csr_der, allowed_keys=self.d.cfg.acme.allowed_keys)
        if checked.identifiers != order.identifiers:
            want = ", ".join(i.value for i in order.identifiers)
            got = ", ".join(i.value for i in checked.identifiers) or "(none)"
            raise AcmeProblem("badCSR", f"CSR names ({got}) must be exactly the order's "
                              f"identifiers ({want})")
        self._check_key_is_new(checked)
        return checked

    def _check_device(self, order: Order, csr_der: bytes, plan: DevicePlan) -> CheckedCSR:
        """A node's certificate takes its names from the templates: the CSR may ask for the
        node's DNS name or nothing, and its key must be new (never the bootstrap key)."""
        checked = check_csr(csr_der, allowed_keys=self.d.cfg.acme.allowed_keys)
        allowed = {Identifier("dns", plan.identity.dns_name)}
        extra = [i.value for i in checked.identifiers if i not in allowed]
        if extra:
            raise AcmeProblem("badCSR", f"CSR asks for {', '.join(extra)}; a node's certificate "
                              f"names only {plan.identity.dns_name} and its SPIFFE ID")
        if checked.key_fingerprint == plan.bootstrap_spki:
            raise AcmeProblem("badCSR", "the CSR key is the bootstrap key: the operational "
                              "certificate needs a new key (the bootstrap key only proves identity)")
        self._check_key_is_new(checked)
        return checked

    def _check_key_is_new(self, checked: CheckedCSR) -> None:
        if self.d.store.is_account_key(thumbprint(jwk_of_public_key(checked.public_key))):
            raise AcmeProblem("badCSR", "the CSR key is an ACME account key; use a separate key")
        if self.d.store.key_in_use(checked.key_fingerprint):
            raise AcmeProblem("badCSR", "the CSR key was certified before; every certificate "
                              "needs a fresh key (reused keys are refused)")

    def _validity(self, order: Order, plan: DevicePlan | None = None) -> tuple[datetime, datetime]:
        now = self.d.now()
        lifetime = self.d.cfg.profiles[order.profile].lifetime
        if plan is not None:
            lifetime = min(lifetime, self.d.cfg.identity.lifetime)
        not_before = order.not_before or (now - self.d.cfg.acme.backdate)
        not_after = order.not_after or (not_before + lifetime)
        if order.not_after is None:
            # A profile lifetime reaching past the intermediate's expiry would make the CA
            # refuse (CAError, a 500); end the certificate with its issuer instead.
            not_after = min(not_after, self.d.ca.intermediate_cert.not_valid_after_utc)
        return not_before, not_after

    async def _issue(self, order: Order, checked: CheckedCSR, plan: DevicePlan | None = None,
                     *, started: float | None = None) -> Order:
        not_before, not_after = self._validity(order, plan)
        try:
            if plan is not None:
                ident = plan.identity
                issued: IssuedCertificate = self.d.ca.issue(
                    checked.public_key, dns_names=[ident.dns_name], uris=[ident.spiffe_id],
                    permanent_identifiers=[ident.device_id]
                    if self.d.cfg.identity.include_permanent_identifier else [],
                    not_before=not_before, not_after=not_after, crl_url=self.crl_url)
            else:
                issued = self.d.ca.issue(
                    checked.public_key,
                    dns_names=[i.value for i in order.identifiers if i.type == "dns"],
                    ip_addresses=[ipaddress.ip_address(i.value) for i in order.identifiers
                                  if i.type == "ip"],
                    not_before=not_before, not_after=not_after, crl_url=self.crl_url)
        except CAError as exc:
            # Never leave the order in `processing` (resume() would retry it forever).
            log.error("CA refused order %s: %s", order.id, exc)
            error = {"type": "urn:ietf:params:acme:error:serverInternal",
                     "detail": f"the CA refused to sign: {exc}"}
            await self.d.store.write(self.d.store.set_order_status, order.id, Status.INVALID,
                                     expect=Status.PROCESSING, error=error)
            raise AcmeProblem("serverInternal", error["detail"]) from None
        cert = Certificate(serial=serial_hex(issued.serial), account_id=order.account_id,
                           order_id=order.id, chain_pem=issued.chain_pem.decode(),
                           not_before=issued.not_before, not_after=issued.not_after,
                           identifiers=order.identifiers, key_fingerprint=checked.key_fingerprint,
                           ari_id=make_cert_id(self.d.ca.intermediate_ski, issued.serial),
                           device_id=plan.node.device_id if plan else None)
        if not await self.d.store.write(self.d.store.complete_order, order.id, cert):
            raise AcmeProblem("orderNotReady", "the order changed while it was being finalized")
        self.d.telemetry.certificate_issued(
            device=plan is not None,
            latency=(self.d.now() - order.created_at).total_seconds() if order.created_at else None,
            finalize=time.monotonic() - started if started is not None else None)
        if plan is not None and self.devices is not None:
            await self.devices.supersede(plan.node.device_id, cert.serial, plan.node.account_id,
                                         order.account_id)
        log.info("issued %s for %s (order %s, profile %s)", cert.serial,
                 ",".join(i.value for i in order.identifiers), order.id, order.profile)
        # What complete_order just stored; no need to read it back.
        return dataclasses.replace(order, status=Status.VALID, certificate_serial=cert.serial,
                                   error=None)

    async def resume(self) -> int:
        """Finish orders a crash left in `processing`."""
        n = 0
        for order in self.d.store.orders_processing():
            if order.csr_der is None:
                await self.d.store.write(
                    self.d.store.set_order_status, order.id, Status.INVALID,
                    expect=Status.PROCESSING, error={"type": "urn:ietf:params:acme:error:serverInternal",
                                                     "detail": "finalize was interrupted"})
                continue
            try:
                plan = self.devices.plan(order) if self.devices is not None else None
                await self._issue(order, check_csr(order.csr_der,
                                                   allowed_keys=self.d.cfg.acme.allowed_keys), plan)
                n += 1
            except AcmeProblem as p:
                log.error("could not finish order %s after restart: %s", order.id, p)
        return n
