"""Stored state -> ACME wire objects (`acme.messages`), in one place."""
from __future__ import annotations

from typing import Any

from acme import challenges, messages

from server.api.links import Links
from server.models import Account, Authorization, Challenge, Order


def _error(err: dict[str, Any] | None) -> messages.Error | None:
    return messages.Error.from_json(err) if err else None


def _status(name: str) -> messages.Status:
    """acme.messages.Status lacks RFC 8555's `expired` (§7.1.6): callers put the real name
    back into the JSON; this only keeps the model from refusing it (a 500 before)."""
    known = messages.Status.POSSIBLE_NAMES.get(name)
    return known if isinstance(known, messages.Status) else messages.STATUS_PENDING


def account(acct: Account, links: Links) -> dict[str, Any]:
    body: dict[str, Any] = messages.Registration(
        contact=tuple(acct.contact), status=messages.Status.from_json(acct.status),
        terms_of_service_agreed=acct.tos_agreed or None).to_json()
    body["orders"] = links.orders(acct.id)
    return body


def challenge(ch: Challenge, links: Links) -> dict[str, Any]:
    chall = challenges.Challenge.from_json({"type": ch.type, "token": ch.token})
    body = messages.ChallengeBody(
        chall=chall, uri=links.challenge(ch.id), status=_status(ch.status),
        validated=ch.validated, error=_error(ch.error))
    out: dict[str, Any] = body.to_json()
    out["status"] = ch.status
    if isinstance(chall, challenges.UnrecognizedChallenge):
        out["token"] = ch.token
    return out


def authorization(authz: Authorization, links: Links) -> dict[str, Any]:
    body: dict[str, Any] = messages.Authorization(
        identifier=messages.Identifier(typ=messages.IdentifierType(authz.identifier.type),
                                       value=authz.identifier.value),
        status=_status(authz.status), expires=authz.expires,
        wildcard=authz.wildcard or None).to_json()
    body["status"] = authz.status
    body["challenges"] = [challenge(c, links) for c in authz.challenges]
    return body


def order(o: Order, links: Links) -> dict[str, Any]:
    body: dict[str, Any] = messages.Order(
        identifiers=[messages.Identifier(typ=messages.IdentifierType(i.type), value=i.value)
                     for i in o.identifiers],
        status=_status(o.status),
        authorizations=[links.authz(a) for a in o.authz_ids],
        finalize=links.finalize(o.id), expires=o.expires, profile=o.profile,
        certificate=links.certificate(o.certificate_serial) if o.certificate_serial else None,
        error=_error(o.error)).to_json()
    body["status"] = o.status
    # Fields acme.messages does not model (RFC 8555 §7.1.3, RFC 9773).
    if o.not_before:
        body["notBefore"] = _rfc3339(o.not_before)
    if o.not_after:
        body["notAfter"] = _rfc3339(o.not_after)
    if o.replaces:
        body["replaces"] = o.replaces
    return body


def _rfc3339(dt: Any) -> str:
    return str(dt.strftime("%Y-%m-%dT%H:%M:%SZ"))


