"""Revocation (RFC 8555 §7.6): who may revoke, with which reason."""
from __future__ import annotations

import logging
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from server.errors import AcmeProblem, malformed, unauthorized
from server.jws import PublicKey, b64d
from server.models import Account, Certificate, Status
from server.ra.deps import Deps
from server.ra.issuance import serial_hex

log = logging.getLogger("nodetrust.ra")

# RFC 5280 §5.3.1 reasons a subscriber may give; certificateHold/removeFromCRL need a
# hold model we do not have, and cACompromise/aACompromise are not a leaf's to claim.
ALLOWED_REASONS = {0: "unspecified", 1: "keyCompromise", 3: "affiliationChanged",
                   4: "superseded", 5: "cessationOfOperation", 9: "privilegeWithdrawn"}


def _spki(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))


class RevocationService:
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    def _find(self, payload: dict[str, Any]) -> tuple[Certificate, x509.Certificate, int]:
        der = b64d(payload.get("certificate"), "certificate")
        try:
            leaf = x509.load_der_x509_certificate(der)
        except ValueError:
            raise malformed("certificate is not DER X.509") from None
        reason = payload.get("reason", 0)
        if not isinstance(reason, int) or isinstance(reason, bool) or reason not in ALLOWED_REASONS:
            raise AcmeProblem("badRevocationReason", f"reason {reason!r} is not accepted; use one of "
                              + ", ".join(f"{k} ({v})" for k, v in ALLOWED_REASONS.items()))
        stored = self.d.store.get_certificate(serial_hex(leaf.serial_number))
        if stored is None or x509.load_pem_x509_certificate(
                stored.chain_pem.encode()).public_bytes(serialization.Encoding.DER) != der:
            raise AcmeProblem("malformed", "this server did not issue that certificate", status=404)
        return stored, leaf, reason

    async def revoke_by_account(self, account: Account, payload: dict[str, Any]) -> Certificate:
        stored, _, reason = self._find(payload)
        if stored.account_id != account.id and not self._holds_all_names(account, stored):
            raise unauthorized("only the issuing account, an account with valid authorizations "
                               "for every name, or the certificate key may revoke it")
        return await self._revoke(stored, reason, f"acme:{account.id}")

    async def revoke_by_key(self, key: PublicKey, payload: dict[str, Any]) -> Certificate:
        stored, leaf, reason = self._find(payload)
        if _spki(leaf.public_key()) != _spki(key):
            raise unauthorized("the request is not signed by the certificate's key")
        return await self._revoke(stored, reason, "acme:certificate-key")

    def _holds_all_names(self, account: Account, cert: Certificate) -> bool:
        now = self.d.now()
        return all(account.id in self.d.store.accounts_with_valid_authz(i, now)
                   for i in cert.identifiers)

    async def _revoke(self, cert: Certificate, reason: int, by: str) -> Certificate:
        if cert.status == Status.REVOKED or not await self.d.store.write(self.d.store.revoke_certificate, 
                cert.serial, reason=reason, when=self.d.now(), actor=by, via="acme"):
            raise AcmeProblem("alreadyRevoked", f"certificate {cert.serial} is already revoked")
        log.info("revoked %s (reason %s) by %s", cert.serial, ALLOWED_REASONS[reason], by)
        done = self.d.store.get_certificate(cert.serial)
        assert done is not None
        return done
