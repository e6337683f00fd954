"""Stored state -> ACME wire JSON (RFC 8555 §7.1), in one place.

Built as plain dicts: rendering through josepy's object model cost ~10% of the server's
CPU per enrollment (py-spy). `tests/unit/test_render.py` parses every shape back with
`acme.messages`, so the client library remains the judge of the wire format.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from server.api.links import Links
from server.models import Account, Authorization, Challenge, Order


def rfc3339(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def account(acct: Account, links: Links) -> dict[str, Any]:
    body: dict[str, Any] = {"status": acct.status, "orders": links.orders(acct.id)}
    if acct.contact:
        body["contact"] = list(acct.contact)
    if acct.tos_agreed:
        body["termsOfServiceAgreed"] = True
    return body


def challenge(ch: Challenge, links: Links) -> dict[str, Any]:
    body: dict[str, Any] = {"type": ch.type, "url": links.challenge(ch.id), "status": ch.status,
                            "token": ch.token}
    if ch.validated is not None:
        body["validated"] = rfc3339(ch.validated)
    if ch.error:
        body["error"] = ch.error
    return body


def authorization(authz: Authorization, links: Links) -> dict[str, Any]:
    body: dict[str, Any] = {
        "identifier": authz.identifier.to_json(), "status": authz.status,
        "expires": rfc3339(authz.expires),
        "challenges": [challenge(c, links) for c in authz.challenges],
    }
    if authz.wildcard:
        body["wildcard"] = True
    return body


def order(o: Order, links: Links) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": o.status, "expires": rfc3339(o.expires),
        "identifiers": [i.to_json() for i in o.identifiers],
        "authorizations": [links.authz(a) for a in o.authz_ids],
        "finalize": links.finalize(o.id), "profile": o.profile,
    }
    if o.not_before:
        body["notBefore"] = rfc3339(o.not_before)
    if o.not_after:
        body["notAfter"] = rfc3339(o.not_after)
    if o.certificate_serial:
        body["certificate"] = links.certificate(o.certificate_serial)
    if o.error:
        body["error"] = o.error
    if o.replaces:
        body["replaces"] = o.replaces
    return body
