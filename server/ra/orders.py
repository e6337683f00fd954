"""Orders, authorizations and challenges (RFC 8555 §7.4, §7.5): the state machine.

Order status is derived from its authorizations when read (as Boulder does) and the
change is written back with compare-and-set, so concurrent readers never race a
validation into an inconsistent state.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

from nodetrust.challenges import DEVICE_ATTEST_01, PERMANENT_IDENTIFIER
from server.errors import ACME_ERROR_PREFIX, AcmeProblem, ValidationFailure, malformed, unauthorized
from server.identity import node_identity
from server.jws import b64e
from server.models import (
    Account,
    Authorization,
    AuthzEvidence,
    Challenge,
    EabKey,
    Identifier,
    Order,
    Status,
)
from server.policy import check_identifiers
from server.ra.ari import parse_cert_id
from server.ra.deps import Deps, new_id
from server.ra.devices import DeviceService
from server.va.registry import ChallengeValidators

log = logging.getLogger("nodetrust.ra")

_FAILED_AUTHZ = (Status.INVALID, Status.DEACTIVATED, Status.REVOKED, Status.EXPIRED)


def parse_time(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise malformed(f"{name} must be an RFC 3339 timestamp")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise malformed(f"{name} {value!r} is not an RFC 3339 timestamp") from None
    if dt.tzinfo is None:
        raise malformed(f"{name} must carry a time zone")
    return dt


class OrderService:
    def __init__(self, deps: Deps, validators: ChallengeValidators,
                 devices: DeviceService | None = None) -> None:
        self.d = deps
        self.validators = validators
        self.devices = devices
        self._tasks: set[asyncio.Task[None]] = set()

    # -- newOrder --------------------------------------------------------------------
    async def new_order(self, account: Account, payload: dict[str, Any]) -> Order:
        cfg, now = self.d.cfg, self.d.now()
        raw = payload.get("identifiers")
        if not isinstance(raw, list) or not all(
                isinstance(i, dict) and isinstance(i.get("type"), str) and isinstance(i.get("value"), str)
                for i in raw):
            raise malformed("identifiers must be a list of {type, value} objects")
        device_domain = self.devices.device_domain if self.devices and self.devices.enabled else None
        idents = check_identifiers([Identifier(i["type"], i["value"]) for i in raw], cfg.identifiers,
                                   device_domain)

        profile = payload.get("profile")
        if profile is None:  # JSON null is "not given", as for every optional field
            profile = cfg.default_profile
        if not isinstance(profile, str) or profile not in cfg.profiles:
            raise AcmeProblem("invalidProfile", f"unknown profile {profile!r}; this server offers "
                              f"{', '.join(sorted(cfg.profiles))}")
        lifetime = cfg.profiles[profile].lifetime
        not_before = parse_time(payload.get("notBefore"), "notBefore")
        not_after = parse_time(payload.get("notAfter"), "notAfter")
        if not_before and not_before > now + cfg.acme.max_validity:
            raise malformed(f"notBefore is more than {cfg.acme.max_validity} ahead "
                            "(rule acme.max_validity)")
        # Without a lower bound a client could have a certificate backdated by years.
        if not_before and not_before < now - cfg.acme.backdate:
            raise malformed(f"notBefore lies more than {cfg.acme.backdate} in the past "
                            "(rule acme.backdate)")
        if not_after:
            start = not_before or now
            if not_after <= start:
                raise malformed("notAfter must be later than notBefore and now")
            if not_after - start > lifetime:
                raise malformed(f"notAfter asks for more than the {lifetime} lifetime of profile "
                                f"{profile!r} (rule profiles.{profile}.lifetime)")
        # The CA cannot sign past its own expiry (CAError at finalize): refuse such a
        # request now, while the client can still change it.
        ca_end = self.d.ca.intermediate_cert.not_valid_after_utc
        if not_after and not_after > ca_end:
            raise malformed(f"notAfter {not_after.isoformat()} is past the issuing CA's expiry "
                            f"{ca_end.isoformat()}")
        if not_before and not not_after and not_before + lifetime > ca_end:
            raise malformed(f"notBefore plus the {lifetime} lifetime of profile {profile!r} is "
                            f"past the issuing CA's expiry {ca_end.isoformat()}")
        replaces = self._check_replaces(account, payload.get("replaces"), idents)

        authz_ids: list[str] = []
        new_authzs: list[Authorization] = []
        evidence: list[AuthzEvidence] = []
        bound = self.devices.preauthorized_device(account) if self.devices else None
        reuse_until = now + timedelta(minutes=5)
        authz_expires = now + cfg.acme.authz_ttl
        order_expires = now + cfg.acme.order_ttl
        for ident in idents:
            found = None
            # A device proves itself on every order: a renewal re-attests, so a bootstrap
            # certificate revoked or denied since the last one stops it at once.
            device = self.devices is not None and self.devices.is_device_identifier(
                ident.type, ident.value)
            if cfg.acme.authz_reuse > timedelta(0) and not device:
                found = self.d.store.find_reusable_authz(account.id, ident, valid_after=reuse_until)
                # acme.authz_reuse bounds how long after its validation an authorization
                # may stand in for a new one (authz_ttl alone would allow a full day).
                validated = max((c.validated for c in found.challenges if c.validated),
                                default=None) if found else None
                if validated is None or validated <= now - cfg.acme.authz_reuse:
                    found = None
            if found is not None:
                authz_ids.append(found.id)
                order_expires = min(order_expires, found.expires)
                continue
            authz = self._new_authz(account.id, ident, authz_expires)
            if bound is not None and self._is_bound_identifier(bound, ident):
                # Earned over bootstrap mTLS (server.api.bootstrap): already proven.
                authz.status = Status.VALID
                for ch in authz.challenges:
                    ch.status, ch.validated = Status.VALID, now
                assert bound.device_id and bound.bootstrap_spki and bound.bootstrap_serial
                evidence.append(AuthzEvidence(authz.id, bound.device_id, bound.bootstrap_spki,
                                              bound.bootstrap_serial))
            new_authzs.append(authz)
            authz_ids.append(authz.id)
        order = Order(id=new_id(), account_id=account.id, status=Status.PENDING, identifiers=idents,
                      authz_ids=authz_ids, expires=min(order_expires, authz_expires), profile=profile,
                      not_before=not_before, not_after=not_after, replaces=replaces, created_at=now)
        await self.d.store.write(self.d.store.insert_order, order, new_authzs, evidence)
        if len(new_authzs) == len(authz_ids) and not evidence:
            return order  # every authorization is new and pending: nothing to derive
        return await self.refresh(order)

    def _is_bound_identifier(self, key: EabKey, ident: Identifier) -> bool:
        assert self.devices is not None and key.device_id is not None
        if ident.type == PERMANENT_IDENTIFIER:
            return ident.value == key.device_id
        return ident.type == "dns" and ident.value == node_identity(
            key.device_id, self.d.cfg.identity).dns_name

    def _new_authz(self, account_id: str, ident: Identifier, expires: datetime) -> Authorization:
        authz_id = new_id()
        wildcard = ident.type == "dns" and ident.value.startswith("*.")
        if self.devices is not None and self.devices.is_device_identifier(ident.type, ident.value):
            # A node's identity is proven by its bootstrap certificate and nothing else.
            types = [DEVICE_ATTEST_01]
        else:
            types = self.validators.types_for(ident.type)
        if wildcard:  # §7.1.3: wildcards prove control through DNS only
            types = [t for t in types if t == "dns-01"]
        if not types:
            raise AcmeProblem("unsupportedIdentifier",
                              f"no challenge can validate {ident.type} identifier {ident.value!r}")
        challenges = [Challenge(id=new_id(), authz_id=authz_id, type=t,
                                token=b64e(secrets.token_bytes(32)), status=Status.PENDING)
                      for t in types]
        value = ident.value[2:] if wildcard else ident.value
        return Authorization(id=authz_id, account_id=account_id,
                             identifier=Identifier(ident.type, value), status=Status.PENDING,
                             expires=expires, wildcard=wildcard, challenges=challenges)

    def _check_replaces(self, account: Account, replaces: Any,
                        idents: list[Identifier]) -> str | None:
        """RFC 9773 §5: `replaces` names a certificate this account may renew."""
        if replaces is None:
            return None
        if not isinstance(replaces, str):
            raise malformed("replaces must be an ARI certificate identifier string")
        parse_cert_id(replaces)
        cert = self.d.store.get_certificate_by_ari_id(replaces)
        if cert is None:
            raise malformed(f"replaces names unknown certificate {replaces!r}")
        if cert.account_id != account.id and not set(cert.identifiers) & set(idents):
            raise unauthorized("replaces names a certificate of another account with no "
                               "identifier in common")
        if self.d.store.order_replacing(replaces) is not None:
            raise AcmeProblem("alreadyReplaced", f"certificate {replaces} is already being replaced "
                              "by another order", status=409)
        return replaces

    # -- reads -----------------------------------------------------------------------
    async def get_order(self, account: Account, order_id: str) -> Order:
        order = self.d.store.get_order(order_id)
        if order is None or order.account_id != account.id:
            raise AcmeProblem("malformed", "no such order", status=404)
        return await self.refresh(order)

    async def refresh(self, order: Order) -> Order:
        """Derive pending/ready/invalid from the authorizations and expiry; persist changes."""
        now = self.d.now()
        if order.status not in (Status.PENDING, Status.READY):
            return order
        new_status, error = order.status, None
        if order.expires <= now:
            new_status, error = Status.INVALID, {"type": "urn:ietf:params:acme:error:malformed",
                                                 "detail": "order expired before it was finalized"}
        else:
            # A ready order is checked too: an authorization deactivated (or expired) after
            # the order became ready must not still let it be finalized (§7.1.6).
            authzs = self.d.store.get_authzs(order.authz_ids)
            failed = [a for a in authzs if a.status in _FAILED_AUTHZ or a.expires <= now]
            if failed:
                new_status = Status.INVALID
                first = failed[0]
                state = Status.EXPIRED if first.expires <= now else first.status
                error = next((c.error for a in failed for c in a.challenges if c.error), None) or {
                    "type": "urn:ietf:params:acme:error:unauthorized",
                    "detail": f"authorization for {first.identifier.value} is {state}"}
            elif (order.status == Status.PENDING and len(authzs) == len(order.authz_ids)
                  and all(a.status == Status.VALID for a in authzs)):
                new_status = Status.READY
        if new_status == Status.READY:
            # Derived on every read, never stored: finalize checks the authorizations again
            # and moves pending|ready -> processing itself (one write fewer per order).
            order.status = new_status
        elif new_status != order.status:
            if await self.d.store.write(self.d.store.set_order_status, order.id, new_status,
                                        expect=order.status, error=error):
                order.status, order.error = new_status, error
            else:
                fresh = self.d.store.get_order(order.id)
                assert fresh is not None
                return fresh
        return order

    def authz_for(self, account: Account, authz_id: str) -> Authorization:
        return self._owned_authz(account, self.d.store.get_authz(authz_id))

    def _owned_authz(self, account: Account, authz: Authorization | None) -> Authorization:
        if authz is None or authz.account_id != account.id:
            raise AcmeProblem("malformed", "no such authorization", status=404)
        if authz.status in (Status.PENDING, Status.VALID) and authz.expires <= self.d.now():
            authz.status = Status.EXPIRED
        return authz

    async def deactivate_authz(self, account: Account, authz_id: str) -> Authorization:
        authz = self.authz_for(account, authz_id)
        if authz.status not in (Status.PENDING, Status.VALID):
            raise malformed(f"an authorization in state {authz.status} cannot be deactivated")
        await self.d.store.write(self.d.store.set_authz_status, authz.id, Status.DEACTIVATED, expect=authz.status)
        return self.authz_for(account, authz_id)

    def challenge_for(self, account: Account, challenge_id: str) -> tuple[Challenge, Authorization]:
        found = self.d.store.get_authz_of_challenge(challenge_id)
        authz = self._owned_authz(account, found) if found else None
        chall = next((c for c in authz.challenges if c.id == challenge_id), None) if authz else None
        if chall is None or authz is None:
            raise AcmeProblem("malformed", "no such challenge", status=404)
        return chall, authz

    # -- validation ------------------------------------------------------------------
    async def respond(self, account: Account, challenge_id: str,
                      payload: dict[str, Any]) -> tuple[Challenge, Authorization]:
        """The client says it is ready: validate in the background (§7.5.1), answering as soon
        as the result is in or after `validation.respond_wait`, whichever comes first.
        device-attest-01 needs no network and is checked before answering."""
        chall, authz = self.challenge_for(account, challenge_id)
        if authz.status == Status.EXPIRED:
            raise malformed("the authorization has expired")
        if chall.type == DEVICE_ATTEST_01 and self.devices is not None:
            if chall.status != Status.PENDING or authz.status != Status.PENDING:
                raise AcmeProblem("badAttestationStatement", f"token already used: the challenge "
                                  f"is {chall.status}; start a new order to attest again")
            if await self.d.store.write(self.d.store.start_challenge, chall.id):
                await self.devices.attest(account, chall, authz, payload)
            return self.challenge_for(account, challenge_id)
        if chall.status == Status.PENDING and authz.status == Status.PENDING:
            if await self.d.store.write(self.d.store.start_challenge, chall.id):
                task = self._spawn(chall, authz, account.thumbprint)
                wait = self.d.cfg.validation.respond_wait
                if wait > 0:
                    # shield: a client that hangs up must not cancel the validation
                    await asyncio.wait({asyncio.shield(task)}, timeout=wait)
                return self.challenge_for(account, challenge_id)
        return chall, authz

    def _spawn(self, chall: Challenge, authz: Authorization,
               account_thumbprint: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(
            self._validate(chall, authz, f"{chall.token}.{account_thumbprint}"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _validate(self, chall: Challenge, authz: Authorization, key_authz: str) -> None:
        ident = authz.identifier
        error: dict[str, Any] | None = None
        try:
            await asyncio.wait_for(
                self.validators.validate(chall.type, ident.type, ident.value, chall.token, key_authz),
                timeout=self.d.cfg.validation.timeout + 1)
        except ValidationFailure as f:
            error = f.to_json()
        except asyncio.TimeoutError:
            error = ValidationFailure("connection", f"validation of {ident.value} timed out").to_json()
        except asyncio.CancelledError:
            return  # shutting down: the challenge stays processing and resumes on restart
        except Exception:  # a validator bug must not leave the challenge processing forever
            log.exception("validator %s crashed", chall.type)
            error = ValidationFailure("serverInternal", "validation failed internally").to_json()
        if error:
            error["identifier"] = ident.to_json()
        await self.d.store.write(self.d.store.finish_challenge, chall.id, authz.id,
                                 valid=error is None, when=self.d.now(), error=error)
        self.d.telemetry.challenge_result(
            chall.type, str(error["type"]).removeprefix(ACME_ERROR_PREFIX) if error else None)
        # Failures are what an operator looks for; successes are in the audit trail.
        if error is None:
            log.debug("challenge %s %s for %s: valid", chall.id, chall.type, ident.value)
        else:
            log.info("challenge %s %s for %s: invalid (%s)", chall.id, chall.type, ident.value,
                     error["detail"])

    async def resume(self) -> int:
        """After a restart, validate again what was in flight."""
        n = 0
        for chall, authz in self.d.store.challenges_processing():
            if chall.type == DEVICE_ATTEST_01:
                # Either waiting for an operator's rejoin approval (evidence recorded: leave
                # it), or cut off mid-check: the attObj is not kept, so the node starts over.
                if not self.d.store.evidence_for([authz.id]):
                    error = ValidationFailure("badAttestationStatement", "attestation was "
                                              "interrupted by a server restart; place a new "
                                              "order").to_json()
                    await self.d.store.write(self.d.store.finish_challenge, chall.id, authz.id,
                                             valid=False, when=self.d.now(), error=error)
                continue
            acct = self.d.store.get_account(authz.account_id)
            if acct is not None:
                self._spawn(chall, authz, acct.thumbprint)
                n += 1
        return n

    async def drain(self) -> None:
        """Wait until every validation in flight has recorded its result."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
