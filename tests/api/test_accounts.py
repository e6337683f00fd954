"""Accounts (RFC 8555 §7.3): creation, lookup, contacts, terms of service, update,
deactivation, the orders list, and the newAccount rate limit."""
from __future__ import annotations

import pytest

import server.api.handlers_accounts as handlers_accounts
from support.harness import Harness, MakeHarness
from support.acmeclient import Key, assert_problem


async def test_new_account_201_with_location(harness: Harness) -> None:
    c = await harness.client()
    r = await c.new_account(contact=["mailto:ops@example.test"])
    assert r.status == 201, r.body
    assert r.location.startswith("http://test.invalid/acme/acct/")
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers["Replay-Nonce"] and 'rel="index"' in r.headers["Link"]
    assert r.json["status"] == "valid"
    assert r.json["contact"] == ["mailto:ops@example.test"]
    assert r.json["orders"] == r.location + "/orders"


async def test_same_key_again_returns_the_existing_account(harness: Harness) -> None:
    key = Key()
    first = await harness.client(key)
    r1 = await first.new_account(contact=["mailto:a@example.test"])
    assert r1.status == 201
    second = await harness.client(key)
    r2 = await second.new_account(contact=["mailto:other@example.test"])
    assert r2.status == 200, r2.body
    assert r2.location == r1.location
    assert r2.json["contact"] == ["mailto:a@example.test"]  # not changed by the second call
    r3 = await second.new_account(onlyReturnExisting=True)
    assert r3.status == 200 and r3.location == r1.location


async def test_only_return_existing_for_unknown_key(harness: Harness) -> None:
    c = await harness.client()
    r = await c.new_account(onlyReturnExisting=True)
    assert_problem(r, 400, "accountDoesNotExist", "no account exists for this key")
    assert harness.ctx.store.get_account_by_thumbprint(c.key.thumbprint) is None


@pytest.mark.parametrize("contact, code, detail", [
    (["mailto:not-an-email"], "invalidContact", "is not a single plain email address"),
    (["mailto:a@example.test?subject=hi"], "invalidContact", "single plain email"),
    (["mailto:a@example.test,b@example.test"], "invalidContact", "single plain email"),
    (["tel:+15555550100"], "unsupportedContact", "contact scheme 'tel' is not supported"),
    ([f"mailto:u{i}@example.test" for i in range(11)], "invalidContact", "at most 10 contacts"),
    ("mailto:a@example.test", "malformed", "contact must be a list"),
    ([42], "malformed", "contact must be a list of URL strings"),
])
async def test_contact_validation(harness: Harness, contact: object, code: str,
                                  detail: str) -> None:
    c = await harness.client()
    r = await c.new_account(contact=contact)
    assert_problem(r, 400, code, detail)
    assert harness.ctx.store.get_account_by_thumbprint(c.key.thumbprint) is None


async def test_contact_scheme_is_case_insensitive(harness: Harness) -> None:
    """RFC 3986 §3.1: schemes are case-insensitive."""
    c = await harness.client()
    r = await c.new_account(contact=["MAILTO:ops@example.test"])
    assert r.status == 201, r.body


async def test_ten_contacts_are_fine(harness: Harness) -> None:
    c = await harness.client()
    contacts = [f"mailto:u{i}@example.test" for i in range(10)]
    r = await c.new_account(contact=contacts)
    assert r.status == 201 and r.json["contact"] == contacts


async def test_terms_of_service_must_be_agreed(make_harness: MakeHarness) -> None:
    h = await make_harness(acme={"terms_of_service": "https://tos.test"})
    c = await h.client()
    r = await c.post(c.url("newAccount"), {"contact": []}, kid=None)
    assert_problem(r, 403, "userActionRequired", "terms of service must be agreed")
    assert '<https://tos.test>;rel="terms-of-service"' in r.headers.getall("Link")
    r = await c.new_account(termsOfServiceAgreed=False)
    assert_problem(r, 403, "userActionRequired", "termsOfServiceAgreed")
    r = await c.new_account()  # agrees
    assert r.status == 201 and r.json["termsOfServiceAgreed"] is True


async def test_no_terms_of_service_needs_no_agreement(harness: Harness) -> None:
    c = await harness.client()
    r = await c.post(c.url("newAccount"), {}, kid=None)
    assert r.status == 201, r.body


async def test_directory_meta(make_harness: MakeHarness) -> None:
    h = await make_harness(acme={"terms_of_service": "https://tos.test",
                                 "website": "https://site.test"})
    r = await h.http.get("/acme/directory")
    assert r.status == 200
    d = await r.json()
    assert d["meta"]["termsOfService"] == "https://tos.test"
    assert d["meta"]["website"] == "https://site.test"
    assert d["meta"]["profiles"] == {"default": "24 hours", "shortlived": "6 hours"}
    assert "externalAccountRequired" not in d["meta"]
    for name in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange"):
        assert d[name].startswith("http://test.invalid/acme/")


async def test_post_as_get_returns_the_account(harness: Harness) -> None:
    c = await harness.account(contact=["mailto:a@example.test"])
    r = await c.post(c.kid)
    assert r.status == 200, r.body
    assert r.location == c.kid
    assert r.json["status"] == "valid" and r.json["contact"] == ["mailto:a@example.test"]


async def test_contact_update(harness: Harness) -> None:
    c = await harness.account(contact=["mailto:a@example.test"])
    r = await c.post(c.kid, {"contact": ["mailto:b@example.test"]})
    assert r.status == 200 and r.json["contact"] == ["mailto:b@example.test"]
    r = await c.post(c.kid)
    assert r.json["contact"] == ["mailto:b@example.test"]
    r = await c.post(c.kid, {"contact": ["tel:+1555"]})
    assert_problem(r, 400, "unsupportedContact", "'tel'")
    r = await c.post(c.kid, {"contact": []})
    assert r.status == 200 and r.json.get("contact", []) == []


async def test_update_echoing_status_valid_keeps_the_account(harness: Harness) -> None:
    """Clients may send back the status they read; that must not deactivate the account."""
    c = await harness.account()
    r = await c.post(c.kid, {"status": "valid", "contact": ["mailto:c@example.test"]})
    assert r.status == 200, r.body
    assert r.json["status"] == "valid" and r.json["contact"] == ["mailto:c@example.test"]
    r = await c.post(c.kid)
    assert r.status == 200 and r.json["status"] == "valid", r.body


async def test_deactivation(harness: Harness) -> None:
    c = await harness.account()
    order = await c.new_order("deact.test")
    assert order.status == 201
    r = await c.post(c.kid, {"status": "deactivated"})
    assert r.status == 200 and r.json["status"] == "deactivated"
    r = await c.post(c.kid)
    assert_problem(r, 403, "unauthorized", "the account is deactivated")
    r = await c.post(order.location)
    assert_problem(r, 403, "unauthorized", "deactivated")
    # The key cannot come back through newAccount either.
    r = await c.new_account()
    assert_problem(r, 403, "unauthorized", "deactivated")
    # §7.3.6: its pending authorizations are deactivated too.
    authz_id = order.json["authorizations"][0].rsplit("/", 1)[1]
    authz = harness.ctx.store.get_authz(authz_id)
    assert authz is not None and authz.status == "deactivated"


@pytest.mark.parametrize("status", ["revoked", "pending", "invalid", 7])
async def test_only_deactivated_may_be_set(harness: Harness, status: object) -> None:
    c = await harness.account()
    r = await c.post(c.kid, {"status": status})
    assert_problem(r, 400, "malformed", "the only status a client may set is 'deactivated'")
    r = await c.post(c.kid)
    assert r.json["status"] == "valid"


async def test_other_accounts_url_is_unauthorized(harness: Harness) -> None:
    a = await harness.account()
    b = await harness.account(contact=["mailto:b@example.test"])
    r = await a.post(b.kid)
    assert_problem(r, 403, "unauthorized", "signed by another account")
    r = await a.post(b.kid, {"status": "deactivated"})
    assert_problem(r, 403, "unauthorized", "another account")
    r = await a.post(b.kid + "/orders")
    assert_problem(r, 403, "unauthorized", "another account")
    r = await b.post(b.kid)
    assert r.json["status"] == "valid"


async def test_orders_list(harness: Harness) -> None:
    c = await harness.account()
    urls = []
    for i in range(3):
        o = await c.new_order(f"o{i}.test")
        assert o.status == 201
        urls.append(o.location)
    r = await c.post(c.kid + "/orders")
    assert r.status == 200, r.body
    assert sorted(r.json["orders"]) == sorted(urls)
    assert 'rel="next"' not in ",".join(r.headers.getall("Link"))
    other = await harness.account()
    r = await other.post(other.kid + "/orders")
    assert r.status == 200 and r.json["orders"] == []


def _next_link(links: list[str]) -> str | None:
    for link in links:
        if 'rel="next"' in link:
            return link.split(">")[0].lstrip("<")
    return None


async def test_orders_list_pagination(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers_accounts, "ORDERS_PAGE", 2)
    c = await harness.account()
    urls = set()
    for i in range(5):
        o = await c.new_order(f"p{i}.test")
        assert o.status == 201
        urls.add(o.location)
    pages: list[list[str]] = []
    url: str | None = c.kid + "/orders"
    while url is not None:
        r = await c.post(url)
        assert r.status == 200, r.body
        pages.append(r.json["orders"])
        url = _next_link(r.headers.getall("Link"))
        assert len(pages) <= 5, "pagination does not terminate"
    assert [len(p) for p in pages] == [2, 2, 1]
    seen = [u for p in pages for u in p]
    assert len(seen) == len(set(seen)) and set(seen) == urls


async def test_new_account_rate_limit(make_harness: MakeHarness) -> None:
    h = await make_harness(rate_limits={"new_account_per_ip": "2/1h"})
    first = await h.account()
    await h.account()
    third = await h.client()
    r = await third.new_account()
    doc = assert_problem(r, 429, "rateLimited", "rate_limits.new_account_per_ip")
    assert int(r.headers["Retry-After"]) > 0
    assert "retry after" in doc["detail"]
    # The refused account was not created ...
    assert h.ctx.store.get_account_by_thumbprint(third.key.thumbprint) is None
    r = await third.new_account(onlyReturnExisting=True)
    assert_problem(r, 400, "accountDoesNotExist")
    # ... and looking up an existing account is not a creation, so it is not limited.
    again = await h.client(first.key)
    r = await again.new_account()
    assert r.status == 200 and r.location == first.kid
