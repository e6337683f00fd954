"""Accounts (RFC 8555 §7.3): creation with optional external account binding, update,
deactivation and key rollover."""
from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any, Callable

from server.errors import AcmeProblem, malformed, unauthorized
from server.jws import (
    ParsedJWS,
    b64d,
    key_from_jwk,
    parse_jws,
    payload_json,
    public_jwk,
    thumbprint,
    verify_signature,
)
from server.models import Account, Status
from server.ra.deps import Deps, new_id

_EMAIL = re.compile(r"^[^@\s,;<>]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.[A-Za-z0-9-]+$")
_EAB_ALGS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
MAX_CONTACTS = 10


class AccountService:
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    def check_contacts(self, contact: Any) -> list[str]:
        if contact is None:
            return []
        if not isinstance(contact, list) or not all(isinstance(c, str) for c in contact):
            raise malformed("contact must be a list of URL strings")
        if len(contact) > MAX_CONTACTS:
            raise AcmeProblem("invalidContact", f"at most {MAX_CONTACTS} contacts")
        schemes = self.d.cfg.acme.allowed_contact_schemes
        for c in contact:
            scheme, _, rest = c.partition(":")
            scheme = scheme.lower()  # RFC 3986 §3.1: schemes are case-insensitive
            if scheme not in schemes:
                raise AcmeProblem("unsupportedContact", f"contact scheme {scheme!r} is not supported "
                                  f"(accepted: {', '.join(schemes)})")
            if scheme == "mailto" and ("?" in rest or not _EMAIL.match(rest)):
                raise AcmeProblem("invalidContact", f"{c!r} is not a single plain email address")
        return list(contact)

    async def new_account(self, jws: ParsedJWS, jwk: dict[str, Any], payload: dict[str, Any],
                    new_account_url: str, *,
                    admit: Callable[[], None] | None = None) -> tuple[Account, bool]:
        """Returns (account, created). An existing key returns its account (§7.3.1).
        `admit` (the newAccount rate limit) runs only when an account is about to be created,
        so a refused request creates nothing and a lookup of an existing key costs nothing."""
        tp = thumbprint(jwk)
        existing = self.d.store.get_account_by_thumbprint(tp)
        if existing is not None:
            if existing.status == Status.DEACTIVATED:
                raise unauthorized("the account of this key is deactivated")
            return existing, False
        if payload.get("onlyReturnExisting") is True:
            raise AcmeProblem("accountDoesNotExist", "no account exists for this key")
        acme = self.d.cfg.acme
        contact = self.check_contacts(payload.get("contact"))
        agreed = payload.get("termsOfServiceAgreed") is True
        if acme.terms_of_service and not agreed:
            raise AcmeProblem("userActionRequired", "the terms of service must be agreed to "
                              "(termsOfServiceAgreed: true)",
                              headers={"Link": f'<{acme.terms_of_service}>;rel="terms-of-service"'})
        eab_kid = None
        eab = payload.get("externalAccountBinding")
        if eab is not None and (acme.eab != "off" or self._is_device_binding(eab)):
            # With EAB off, only keys a device earned over bootstrap mTLS are honored: they
            # carry its pre-authorization (server.api.bootstrap); other bindings are ignored.
            eab_kid = self._check_eab(eab, jwk, new_account_url)
        elif acme.eab == "required":
            raise AcmeProblem("externalAccountRequired", "this server requires an external account "
                              "binding (rule acme.external_account_binding = required); "
                              "ask the operator for `nodetrust eab create`")
        if admit is not None:
            admit()
        acct = Account(id=new_id(), thumbprint=tp, jwk=public_jwk(jwk), status=Status.VALID,
                       contact=contact, created_at=self.d.now(), tos_agreed=agreed, eab_kid=eab_kid)
        if not await self.d.store.write(self.d.store.insert_account, acct):
            again = self.d.store.get_account_by_thumbprint(tp)
            if again is not None:  # a concurrent newAccount with the same key won
                return again, False
            raise unauthorized("the external account binding key was used by another account")
        return acct, True

    def _is_device_binding(self, eab: Any) -> bool:
        try:
            kid = parse_eab(eab)["protected"].get("kid")
        except AcmeProblem:
            return False
        key = self.d.store.get_eab_key(kid) if isinstance(kid, str) else None
        return key is not None and key.device_id is not None

    def _check_eab(self, eab: Any, jwk: dict[str, Any], new_account_url: str) -> str:
        """RFC 8555 §7.3.4: an HMAC JWS over the account key, by a key the operator issued."""
        inner = parse_eab(eab)
        prot = inner["protected"]
        alg, kid = prot.get("alg"), prot.get("kid")
        if alg not in _EAB_ALGS:
            raise malformed(f"externalAccountBinding alg {alg!r} is not HS256/HS384/HS512")
        if not isinstance(kid, str):
            raise malformed("externalAccountBinding has no kid")
        if prot.get("url") != new_account_url:
            raise malformed("externalAccountBinding url must be the newAccount URL")
        if "nonce" in prot:
            raise malformed("externalAccountBinding must not carry a nonce")
        key = self.d.store.get_eab_key(kid)
        if key is None or key.revoked:
            raise unauthorized(f"external account binding key {kid!r} is unknown or revoked")
        if key.account_id is not None:
            raise unauthorized(f"external account binding key {kid!r} is already bound to an account")
        mac = hmac.new(key.hmac_key, inner["signing_input"], _EAB_ALGS[alg]).digest()
        if not hmac.compare_digest(mac, inner["signature"]):
            raise unauthorized("externalAccountBinding MAC does not verify")
        try:
            bound = json.loads(inner["payload"])
        except (ValueError, RecursionError):  # deep nesting must not become a 500
            raise malformed("externalAccountBinding payload is not a JWK") from None
        if not _same_key(bound, jwk):
            raise malformed("externalAccountBinding payload is not the account key")
        return kid

    async def update(self, account: Account, payload: dict[str, Any]) -> Account:
        status = payload.get("status")
        if status is not None and status != Status.DEACTIVATED and status != account.status:
            raise malformed("the only status a client may set is 'deactivated'")
        contact = self.check_contacts(payload["contact"]) if "contact" in payload else None
        if status == Status.DEACTIVATED or contact is not None:
            # Only an explicit "deactivated" deactivates: a client echoing its current
            # status ("valid") alongside a contact change used to deactivate the account.
            await self.d.store.write(self.d.store.update_account, account.id, contact=contact,
                                        status=Status.DEACTIVATED
                                        if status == Status.DEACTIVATED else None)
        updated = self.d.store.get_account(account.id)
        assert updated is not None
        return updated

    async def key_change(self, account: Account, outer_url: str, account_url: str,
                   payload: bytes, *, url_of: Callable[[str], str] | None = None) -> Account:
        """§7.3.5: the inner JWS, signed by the new key, names the account and the old key."""
        inner = parse_jws(payload)
        prot = inner.protected
        if "kid" in prot or not isinstance(prot.get("jwk"), dict):
            raise malformed("keyChange inner JWS must carry the new key as jwk, not kid")
        if prot.get("url") != outer_url:
            raise malformed("keyChange inner JWS url must equal the outer url")
        new_jwk = prot["jwk"]
        verify_signature(inner, key_from_jwk(new_jwk))
        body = payload_json(inner)
        if body.get("account") != account_url:
            raise malformed("keyChange account does not match the signing account")
        old = body.get("oldKey")
        if not _same_key(old, account.jwk):
            raise AcmeProblem("malformed", "keyChange oldKey is not the account's current key")
        new_tp = thumbprint(new_jwk)
        if new_tp == account.thumbprint:
            raise malformed("keyChange new key equals the old key")
        holder = self.d.store.get_account_by_thumbprint(new_tp)
        if holder is not None or not await self.d.store.write(self.d.store.change_account_key, account.id,
                                                                     public_jwk(new_jwk), new_tp):
            holder = holder or self.d.store.get_account_by_thumbprint(new_tp)
            # §7.3.5: the 409 SHOULD carry the URL of the account holding the key in Location
            # (it used to carry only the bare id in the problem body).
            headers = {"Location": url_of(holder.id)} if holder and url_of else {}
            raise AcmeProblem("conflict", "the new key already belongs to another account",
                              status=409, headers=headers)
        updated = self.d.store.get_account(account.id)
        assert updated is not None
        return updated


def _same_key(candidate: Any, jwk: dict[str, Any]) -> bool:
    """True when `candidate` is a JWK of the same key; a malformed JWK is simply not."""
    if not isinstance(candidate, dict):
        return False
    try:
        return thumbprint(candidate) == thumbprint(jwk)
    except AcmeProblem:
        return False


def parse_eab(eab: Any) -> dict[str, Any]:
    if not isinstance(eab, dict) or not all(isinstance(eab.get(k), str)
                                            for k in ("protected", "payload", "signature")):
        raise malformed("externalAccountBinding must be a flattened JWS object")
    try:
        prot = json.loads(b64d(eab["protected"], "externalAccountBinding.protected"))
    except (ValueError, RecursionError):  # deep nesting must not become a 500
        raise malformed("externalAccountBinding protected header is not JSON") from None
    if not isinstance(prot, dict):
        raise malformed("externalAccountBinding protected header is not an object")
    return {"protected": prot,
            "payload": b64d(eab["payload"], "externalAccountBinding.payload"),
            "signature": b64d(eab["signature"], "externalAccountBinding.signature"),
            "signing_input": f"{eab['protected']}.{eab['payload']}".encode()}
