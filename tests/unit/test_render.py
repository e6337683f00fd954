"""The wire JSON we render is what certbot's `acme` library parses back (and, for the
josepy round trip, what it would have produced itself)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from acme import messages

import nodetrust.challenges  # noqa: F401  registers device-attest-01
from server.api import render
from server.api.links import Links
from server.models import Account, Authorization, Challenge, Identifier, Order

LINKS = Links("https://ca.test")
WHEN = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
ERROR = {"type": "urn:ietf:params:acme:error:incorrectResponse", "detail": "nope", "status": 403}


def _wire(obj: object) -> dict[str, object]:
    return json.loads(json.dumps(obj))  # what a client receives


def test_account() -> None:
    acct = Account(id="a1", thumbprint="t", jwk={}, status="valid", contact=["mailto:x@y.test"],
                   created_at=WHEN, tos_agreed=True)
    parsed = messages.Registration.from_json(_wire(render.account(acct, LINKS)))
    assert list(parsed.contact) == ["mailto:x@y.test"]
    assert parsed.to_json()["status"] == "valid"
    assert parsed.terms_of_service_agreed is True


def test_authorization_with_challenges() -> None:
    chals = [Challenge("c1", "z1", "http-01", TOKEN, "valid", validated=WHEN),
             Challenge("c2", "z1", "tls-alpn-01", TOKEN, "invalid", error=ERROR),
             Challenge("c3", "z1", "device-attest-01", TOKEN, "pending")]
    authz = Authorization("z1", "a1", Identifier("dns", "n1.test"), "pending", WHEN, challenges=chals)
    wire = _wire(render.authorization(authz, LINKS))
    parsed = messages.Authorization.from_json(wire)
    assert parsed.identifier.value == "n1.test" and parsed.expires == WHEN
    # acme 5.x no longer models tls-alpn-01: it parses as UnrecognizedChallenge, type kept
    assert [c.chall.to_json()["type"] for c in parsed.challenges] == [
        "http-01", "tls-alpn-01", "device-attest-01"]
    assert parsed.challenges[0].validated == WHEN
    assert parsed.challenges[0].uri == "https://ca.test/acme/chall/c1"
    assert parsed.challenges[1].error.code == "incorrectResponse"
    assert parsed.challenges[0].chall.encode("token") == TOKEN


def test_order_extensions() -> None:
    o = Order(id="o1", account_id="a1", status="valid", identifiers=[Identifier("dns", "n1.test")],
              authz_ids=["z1"], expires=WHEN, profile="shortlived", not_before=WHEN,
              not_after=WHEN, certificate_serial="abc", replaces="aki.serial")
    wire = _wire(render.order(o, LINKS))
    parsed = messages.Order.from_json(wire)
    assert parsed.status.name == "valid" and parsed.profile == "shortlived"
    assert parsed.certificate == "https://ca.test/acme/cert/abc"
    assert list(parsed.authorizations) == ["https://ca.test/acme/authz/z1"]
    assert wire["notBefore"] == "2026-12-04T12:00:00Z" and wire["replaces"] == "aki.serial"
