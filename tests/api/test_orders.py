"""newOrder (RFC 8555 §7.4): identifier syntax and policy, profiles, validity window,
rate limits, and reading orders back."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from support.harness import Harness, MakeHarness, assert_problem
from support.acmeclient import b64u, csr_der


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# -- malformed requests ------------------------------------------------------------------

@pytest.mark.parametrize("identifiers", [
    "node.test",
    {"type": "dns", "value": "node.test"},
    [{"type": "dns"}],
    [{"value": "node.test"}],
    [{"type": "dns", "value": 7}],
    ["node.test"],
])
async def test_identifiers_must_be_list_of_type_value(harness: Harness, identifiers: object) -> None:
    c = await harness.account()
    r = await c.post(c.url("newOrder"), {"identifiers": identifiers})
    assert_problem(r, 400, "malformed", "identifiers must be a list")


async def test_missing_identifiers_is_malformed(harness: Harness) -> None:
    c = await harness.account()
    r = await c.post(c.url("newOrder"), {})
    assert_problem(r, 400, "malformed", "identifiers")


async def test_empty_identifier_list_is_malformed(harness: Harness) -> None:
    c = await harness.account()
    r = await c.post(c.url("newOrder"), {"identifiers": []})
    assert_problem(r, 400, "malformed", "at least one identifier")


async def test_new_order_needs_payload(harness: Harness) -> None:
    c = await harness.account()
    r = await c.post(c.url("newOrder"))  # POST-as-GET
    assert_problem(r, 400, "malformed", "JSON payload")


# -- identifier policy -------------------------------------------------------------------

async def test_public_name_is_rejected_naming_the_rule(harness: Harness) -> None:
    c = await harness.account()
    r = await c.new_order("example.com")
    doc = assert_problem(r, 400, "rejectedIdentifier", "identifiers.dns_suffixes", "example.com")
    assert doc["identifier"] == {"type": "dns", "value": "example.com"}
    assert ".test" in doc["detail"]  # says what would be allowed


async def test_ip_identifier_refused_when_allow_ip_is_off(harness: Harness) -> None:
    c = await harness.account()
    r = await c.new_order("127.0.0.1")
    doc = assert_problem(r, 400, "rejectedIdentifier", "identifiers.allow_ip", "127.0.0.1")
    assert doc["identifier"] == {"type": "ip", "value": "127.0.0.1"}


async def test_ip_identifier_allowed_validates_by_http01_and_issues(make_harness: MakeHarness) -> None:
    h = await make_harness(identifiers={"allow_ip": True})
    c = await h.account()
    order = await c.new_order("127.0.0.1")
    assert order.status == 201, order.body
    assert order.json["identifiers"] == [{"type": "ip", "value": "127.0.0.1"}]
    authz = (await c.post(order.json["authorizations"][0])).json
    assert authz["identifier"] == {"type": "ip", "value": "127.0.0.1"}
    await h.authorize(c, order.json)
    ready = await c.post(order.location)
    assert ready.json["status"] == "ready", ready.body
    der, _ = csr_der([], ips=["127.0.0.1"])
    fin = await c.post(ready.json["finalize"], {"csr": b64u(der)})
    assert fin.status == 200 and fin.json["status"] == "valid", fin.body
    leaf = x509.load_pem_x509_certificates((await c.post(fin.json["certificate"])).body)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == []


async def test_malformed_ip_identifier(make_harness: MakeHarness) -> None:
    h = await make_harness(identifiers={"allow_ip": True})
    c = await h.account()
    r = await c.post(c.url("newOrder"), {"identifiers": [{"type": "ip", "value": "300.1.1.1"}]})
    assert_problem(r, 400, "malformed", "300.1.1.1", "not an IP address")


async def test_wildcard_is_refused(harness: Harness) -> None:
    c = await harness.account()
    r = await c.new_order("*.node.test")
    assert_problem(r, 400, "rejectedIdentifier", "identifiers.allow_wildcard", "*.node.test")


async def test_unknown_identifier_type_is_unsupported(harness: Harness) -> None:
    c = await harness.account()
    r = await c.post(c.url("newOrder"), {"identifiers": [{"type": "email", "value": "a@b.test"}]})
    doc = assert_problem(r, 400, "unsupportedIdentifier", "'email'")
    assert doc["identifier"] == {"type": "email", "value": "a@b.test"}


async def test_several_bad_names_give_subproblems(harness: Harness) -> None:
    c = await harness.account()
    r = await c.new_order("ok.test", "example.com", "bad_label.test", "*.wild.test")
    doc = assert_problem(r, 400, "rejectedIdentifier", "3 identifiers refused")
    subs = {s["identifier"]["value"]: s for s in doc["subproblems"]}
    assert set(subs) == {"example.com", "bad_label.test", "*.wild.test"}
    assert all(s["type"] == "urn:ietf:params:acme:error:rejectedIdentifier" for s in subs.values())
    assert "identifiers.dns_suffixes" in subs["example.com"]["detail"]
    assert "dns-syntax" in subs["bad_label.test"]["detail"]
    assert "identifiers.allow_wildcard" in subs["*.wild.test"]["detail"]


async def test_dns_patterns_allow_names_outside_the_suffixes(make_harness: MakeHarness) -> None:
    h = await make_harness(identifiers={"dns_patterns": ["*.corp.example.com"]})
    c = await h.account()
    ok = await c.new_order("web.corp.example.com")
    assert ok.status == 201, ok.body
    assert ok.json["identifiers"] == [{"type": "dns", "value": "web.corp.example.com"}]
    for name in ("corp.example.com", "web.example.com", "corp.example.com.evil.test.com"):
        r = await c.new_order(name)
        assert_problem(r, 400, "rejectedIdentifier", "identifiers.dns_suffixes",
                       "*.corp.example.com")


async def test_identifiers_are_normalized_and_deduplicated(harness: Harness) -> None:
    c = await harness.account()
    r = await c.new_order("Node1.TEST.", "node1.test", "a.test")
    assert r.status == 201, r.body
    assert r.json["identifiers"] == [{"type": "dns", "value": "a.test"},
                                     {"type": "dns", "value": "node1.test"}]
    assert len(r.json["authorizations"]) == 2


async def test_too_many_identifiers(make_harness: MakeHarness) -> None:
    h = await make_harness(identifiers={"max_identifiers": 2})
    c = await h.account()
    r = await c.new_order("a.test", "b.test", "c.test")
    assert_problem(r, 400, "rejectedIdentifier", "identifiers.max_identifiers")


# -- reading orders ------------------------------------------------------------------------

async def test_new_order_and_post_as_get(harness: Harness) -> None:
    c = await harness.account()
    r = await c.new_order("read.test")
    assert r.status == 201
    assert r.location.startswith("http://test.invalid/acme/order/")
    assert r.json["status"] == "pending"
    assert r.json["finalize"] == r.location + "/finalize"
    expires = datetime.fromisoformat(r.json["expires"].replace("Z", "+00:00"))
    assert _now() < expires <= _now() + timedelta(days=1, minutes=1)
    got = await c.post(r.location)
    assert got.status == 200
    assert got.location == r.location
    assert got.headers["Retry-After"] == "1"  # pending: poll again
    assert got.json["authorizations"] == r.json["authorizations"]


async def test_order_fetch_needs_post_as_get(harness: Harness) -> None:
    c = await harness.account()
    r = await c.new_order("read.test")
    got = await c.post(r.location, {})
    assert_problem(got, 400, "malformed", "POST-as-GET")


async def test_other_accounts_order_is_not_found(harness: Harness) -> None:
    alice, mallory = await harness.account(), await harness.account()
    r = await alice.new_order("private.test")
    got = await mallory.post(r.location)
    assert_problem(got, 404, "malformed", "no such order")
    fin = await mallory.post(r.json["finalize"], {"csr": "AAAA"})
    assert_problem(fin, 404, "malformed", "no such order")


async def test_order_expires_and_becomes_invalid(harness: Harness) -> None:
    c = await harness.account()
    r = await c.new_order("late.test")
    later = _now() + timedelta(days=2)
    harness.ctx.orders.d.now = lambda: later
    got = await c.post(r.location)
    assert got.json["status"] == "invalid"
    assert "expired" in got.json["error"]["detail"]


# -- profiles -----------------------------------------------------------------------------

async def test_directory_lists_profiles(harness: Harness) -> None:
    c = await harness.client()
    assert c.directory["meta"]["profiles"] == {"default": "24 hours", "shortlived": "6 hours"}


async def test_unknown_profile_is_invalid_profile(harness: Harness) -> None:
    c = await harness.account()
    r = await c.new_order("p.test", profile="forever")
    assert_problem(r, 400, "invalidProfile", "'forever'", "default", "shortlived")
    r = await c.new_order("p.test", profile=5)
    assert_problem(r, 400, "invalidProfile", "5")


async def test_null_profile_means_the_default(harness: Harness) -> None:
    c = await harness.account()
    r = await c.new_order("p.test", profile=None)
    assert r.status == 201, r.body
    assert r.json["profile"] == "default"


async def test_shortlived_profile_issues_six_hour_certificate(harness: Harness) -> None:
    c = await harness.account()
    fin, chain, _ = await harness.issue(c, "short.test", profile="shortlived")
    assert fin.json["profile"] == "shortlived"
    leaf = x509.load_pem_x509_certificate(chain)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=6)


async def test_default_profile_issues_24_hour_certificate(harness: Harness) -> None:
    c = await harness.account()
    fin, chain, _ = await harness.issue(c, "long.test")
    assert fin.json["profile"] == "default"
    leaf = x509.load_pem_x509_certificate(chain)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=24)


# -- notBefore / notAfter -----------------------------------------------------------------

async def test_requested_validity_is_reflected_in_certificate(harness: Harness) -> None:
    c = await harness.account()
    nb, na = _now() + timedelta(hours=1), _now() + timedelta(hours=5)
    fin, chain, _ = await harness.issue(c, "window.test", profile="shortlived",
                                        notBefore=_ts(nb), notAfter=_ts(na))
    assert fin.json["notBefore"] == _ts(nb) and fin.json["notAfter"] == _ts(na)
    leaf = x509.load_pem_x509_certificate(chain)
    assert leaf.not_valid_before_utc == nb
    assert leaf.not_valid_after_utc == na


async def test_not_before_alone_gets_profile_lifetime(harness: Harness) -> None:
    c = await harness.account()
    nb = _now() + timedelta(hours=2)
    _, chain, _ = await harness.issue(c, "nb.test", profile="shortlived", notBefore=_ts(nb))
    leaf = x509.load_pem_x509_certificate(chain)
    assert leaf.not_valid_before_utc == nb
    assert leaf.not_valid_after_utc == nb + timedelta(hours=6)


async def test_not_after_beyond_profile_lifetime_is_malformed(harness: Harness) -> None:
    c = await harness.account()
    r = await c.new_order("w.test", profile="shortlived",
                          notAfter=_ts(_now() + timedelta(hours=7)))
    assert_problem(r, 400, "malformed", "profiles.shortlived.lifetime")
    nb = _now() + timedelta(hours=1)
    r = await c.new_order("w.test", notBefore=_ts(nb), notAfter=_ts(nb + timedelta(hours=25)))
    assert_problem(r, 400, "malformed", "profiles.default.lifetime")


async def test_not_before_too_far_ahead_is_malformed(harness: Harness) -> None:
    c = await harness.account()
    r = await c.new_order("w.test", notBefore=_ts(_now() + timedelta(days=8)))
    assert_problem(r, 400, "malformed", "notBefore", "acme.max_validity")


async def test_not_before_far_in_the_past_is_malformed(harness: Harness) -> None:
    # Without a lower bound a client could have a certificate backdated by years.
    c = await harness.account()
    r = await c.new_order("w.test", notBefore=_ts(_now() - timedelta(days=30)))
    assert_problem(r, 400, "malformed", "notBefore", "acme.backdate")


async def test_not_after_before_not_before_is_malformed(harness: Harness) -> None:
    c = await harness.account()
    nb = _now() + timedelta(hours=3)
    r = await c.new_order("w.test", notBefore=_ts(nb), notAfter=_ts(nb - timedelta(hours=1)))
    assert_problem(r, 400, "malformed", "notAfter must be later")


@pytest.mark.parametrize("value", ["tomorrow", "2030-01-01T00:00:00", 1234])
async def test_bad_timestamps_are_malformed(harness: Harness, value: object) -> None:
    c = await harness.account()
    r = await c.new_order("w.test", notAfter=value)
    assert_problem(r, 400, "malformed", "notAfter")


async def test_not_after_past_the_issuing_ca_is_refused_at_new_order(
        make_harness: MakeHarness) -> None:
    h = await make_harness(profiles={"decade": {"description": "10 years", "lifetime": "3700d"}})
    c = await h.account()
    r = await c.new_order("w.test", profile="decade",
                          notAfter=_ts(_now() + timedelta(days=3000)))
    assert_problem(r, 400, "malformed", "notAfter", "issuing CA")
    r = await c.new_order("w.test", profile="decade",
                          notBefore=_ts(_now() + timedelta(days=1)))
    assert_problem(r, 400, "malformed", "notBefore", "'decade'", "issuing CA")


# -- rate limits -----------------------------------------------------------------------------

async def test_new_order_rate_limit(make_harness: MakeHarness) -> None:
    h = await make_harness(rate_limits={"new_order_per_account": "2/1h"})
    c = await h.account()
    for name in ("r1.test", "r2.test"):
        assert (await c.new_order(name)).status == 201
    r = await c.new_order("r3.test")
    assert_problem(r, 429, "rateLimited", "rate_limits.new_order_per_account")
    assert int(r.headers["Retry-After"]) > 0
    other = await h.account()  # the limit is per account
    assert (await other.new_order("r3.test")).status == 201
