"""Authorizations and challenges (RFC 8555 §7.5): reading, deactivation, validation
results, expiry and reuse."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from support.harness import Harness, MakeHarness, assert_problem
from support.acmeclient import AcmeTestClient


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


async def _pending(harness: Harness, name: str) -> tuple[AcmeTestClient, dict[str, Any], str]:
    """An account, its new order (with `location`) and the order's first authorization URL."""
    c = await harness.account()
    r = await c.new_order(name)
    assert r.status == 201, r.body
    order = dict(r.json, location=r.location)
    return c, order, order["authorizations"][0]


def _http01(authz: dict[str, Any]) -> dict[str, Any]:
    return next(ch for ch in authz["challenges"] if ch["type"] == "http-01")


async def test_authz_post_as_get(harness: Harness) -> None:
    c, _, url = await _pending(harness, "authz.test")
    r = await c.post(url)
    assert r.status == 200
    assert r.location == url
    assert r.headers["Retry-After"] == "1"
    body = r.json
    assert body["identifier"] == {"type": "dns", "value": "authz.test"}
    assert body["status"] == "pending"
    assert _parse(body["expires"]) > datetime.now(UTC)
    assert "wildcard" not in body
    types = [ch["type"] for ch in body["challenges"]]
    assert types == ["http-01", "tls-alpn-01"]
    for ch in body["challenges"]:
        assert ch["status"] == "pending"
        assert ch["url"].startswith("http://test.invalid/acme/chall/")
        assert len(ch["token"]) >= 22  # >= 128 bits of base64url


async def test_challenge_post_as_get(harness: Harness) -> None:
    c, _, url = await _pending(harness, "chall.test")
    ch = _http01((await c.post(url)).json)
    r = await c.post(ch["url"])
    assert r.status == 200
    assert r.json == ch
    assert f'<{url}>;rel="up"' in r.headers.getall("Link")


async def test_deactivation_invalidates_the_order(harness: Harness) -> None:
    c, order, url = await _pending(harness, "deact.test")
    r = await c.post(url, {"status": "deactivated"})
    assert r.status == 200, r.body
    assert r.json["status"] == "deactivated"
    assert "Retry-After" not in r.headers
    assert (await c.post(url)).json["status"] == "deactivated"
    o = (await c.post(order["location"])).json
    assert o["status"] == "invalid"
    assert o["error"]["type"] == "urn:ietf:params:acme:error:unauthorized"
    assert "deactivated" in o["error"]["detail"]
    again = await c.post(url, {"status": "deactivated"})
    assert_problem(again, 400, "malformed", "deactivated cannot be deactivated")


async def test_deactivating_a_valid_authz_invalidates_a_ready_order(harness: Harness) -> None:
    c = await harness.account()
    ready = await harness.ready_order(c, "ready-deact.test")
    url = ready.json["authorizations"][0]
    r = await c.post(url, {"status": "deactivated"})
    assert r.status == 200 and r.json["status"] == "deactivated"
    o = (await c.post(ready.location)).json
    assert o["status"] == "invalid", o
    fin = await c.post(ready.json["finalize"], {"csr": "AAAA"})
    assert_problem(fin, 403, "orderNotReady", "invalid")
    # and a deactivated authorization is not reused for the next order
    again = await c.new_order("ready-deact.test")
    assert again.json["status"] == "pending"
    assert again.json["authorizations"] != ready.json["authorizations"]


async def test_authz_update_other_than_deactivation_is_malformed(harness: Harness) -> None:
    c, _, url = await _pending(harness, "upd.test")
    r = await c.post(url, {"status": "valid"})
    assert_problem(r, 400, "malformed", '{"status": "deactivated"}')
    assert (await c.post(url)).json["status"] == "pending"


async def test_other_accounts_authz_and_challenge_are_not_found(harness: Harness) -> None:
    c, _, url = await _pending(harness, "mine.test")
    ch = _http01((await c.post(url)).json)
    mallory = await harness.account()
    assert_problem(await mallory.post(url), 404, "malformed", "no such authorization")
    assert_problem(await mallory.post(url, {"status": "deactivated"}), 404, "malformed",
                   "no such authorization")
    assert_problem(await mallory.post(ch["url"], {}), 404, "malformed", "no such")
    assert (await c.post(url)).json["status"] == "pending"


async def test_unknown_authz_and_challenge(harness: Harness) -> None:
    c = await harness.account()
    assert_problem(await c.post("http://test.invalid/acme/authz/nope"), 404, "malformed",
                   "no such authorization")
    assert_problem(await c.post("http://test.invalid/acme/chall/nope", {}), 404, "malformed",
                   "no such challenge")


async def test_challenge_response_answers_valid_when_validation_is_quick(harness: Harness) -> None:
    c, order, url = await _pending(harness, "quick.test")
    ch = _http01((await c.post(url)).json)
    harness.responder.tokens[ch["token"]] = f"{ch['token']}.{c.key.thumbprint}"
    r = await c.post(ch["url"], {})  # validation.respond_wait (2 s) covers a loopback fetch
    assert r.status == 200 and r.json["status"] == "valid", r.json
    assert "Retry-After" not in r.headers
    assert (await c.post(url)).json["status"] == "valid"


async def test_challenge_response_processing_then_valid(make_harness: MakeHarness) -> None:
    harness = await make_harness(validation={"respond_wait": "0s"})
    c, order, url = await _pending(harness, "valid.test")
    ch = _http01((await c.post(url)).json)
    harness.responder.tokens[ch["token"]] = f"{ch['token']}.{c.key.thumbprint}"
    r = await c.post(ch["url"], {})
    assert r.status == 200, r.body
    assert r.json["status"] == "processing"
    assert r.headers["Retry-After"] == "1"
    assert f'<{url}>;rel="up"' in r.headers.getall("Link")
    await harness.ctx.orders.drain()
    done = (await c.post(ch["url"])).json
    assert done["status"] == "valid"
    assert "validated" in done and "error" not in done
    authz = await c.post(url)
    assert authz.json["status"] == "valid"
    assert "Retry-After" not in authz.headers
    o = await c.post(order["location"])
    assert o.json["status"] == "ready"
    assert "Retry-After" not in o.headers


async def test_wrong_key_authorization_is_incorrect_response(harness: Harness) -> None:
    c, order, url = await _pending(harness, "wrong.test")
    ch = _http01((await c.post(url)).json)
    harness.responder.tokens[ch["token"]] = f"{ch['token']}.not-the-thumbprint"
    assert (await c.post(ch["url"], {})).status == 200
    await harness.ctx.orders.drain()
    done = (await c.post(ch["url"])).json
    assert done["status"] == "invalid"
    assert done["error"]["type"] == "urn:ietf:params:acme:error:incorrectResponse"
    assert "not-the-thumbprint" in done["error"]["detail"]
    assert done["error"]["identifier"] == {"type": "dns", "value": "wrong.test"}
    assert (await c.post(url)).json["status"] == "invalid"
    o = (await c.post(order["location"])).json
    assert o["status"] == "invalid"
    assert o["error"]["type"] == "urn:ietf:params:acme:error:incorrectResponse"
    # a failed challenge cannot be retried
    assert (await c.post(ch["url"], {})).json["status"] == "invalid"


async def test_nothing_served_is_unauthorized(harness: Harness) -> None:
    c, order, url = await _pending(harness, "absent.test")
    ch = _http01((await c.post(url)).json)
    assert (await c.post(ch["url"], {})).status == 200
    await harness.ctx.orders.drain()
    done = (await c.post(ch["url"])).json
    assert done["status"] == "invalid"
    assert done["error"]["type"] == "urn:ietf:params:acme:error:unauthorized"
    assert "404" in done["error"]["detail"]
    o = (await c.post(order["location"])).json
    assert o["status"] == "invalid" and o["error"]["type"].endswith(":unauthorized")


async def test_expired_authorization(harness: Harness) -> None:
    c, order, url = await _pending(harness, "expire.test")
    authz = (await c.post(url)).json
    after = _parse(authz["expires"]) + timedelta(seconds=1)
    harness.ctx.orders.d.now = lambda: after
    r = await c.post(url)
    assert r.status == 200
    assert r.json["status"] == "expired"
    assert "Retry-After" not in r.headers
    resp = await c.post(_http01(authz)["url"], {})
    assert_problem(resp, 400, "malformed", "expired")
    o = (await c.post(order["location"])).json
    assert o["status"] == "invalid"
    assert "expire" in o["error"]["detail"]


async def test_expired_valid_authorization_shows_expired(harness: Harness) -> None:
    c = await harness.account()
    ready = await harness.ready_order(c, "expire-valid.test")
    url = ready.json["authorizations"][0]
    authz = (await c.post(url)).json
    assert authz["status"] == "valid"
    after = _parse(authz["expires"]) + timedelta(seconds=1)
    harness.ctx.orders.d.now = lambda: after
    assert (await c.post(url)).json["status"] == "expired"
    assert (await c.post(ready.location)).json["status"] == "invalid"
    again = await c.new_order("expire-valid.test")
    assert again.json["status"] == "pending"
    assert again.json["authorizations"] != [url]


async def test_valid_authorizations_are_reused_across_orders(harness: Harness) -> None:
    c = await harness.account()
    first = await harness.ready_order(c, "reuse-a.test", "reuse-b.test")
    second = await c.new_order("reuse-b.test", "reuse-c.test")
    assert second.status == 201
    assert second.json["status"] == "pending"
    b_url = first.json["authorizations"][1]
    assert b_url in second.json["authorizations"]
    assert len(set(second.json["authorizations"]) - set(first.json["authorizations"])) == 1
    await harness.authorize(c, second.json)
    assert (await c.post(second.location)).json["status"] == "ready"
    # another account never gets this account's authorizations
    other = await harness.account()
    theirs = await other.new_order("reuse-a.test")
    assert theirs.json["status"] == "pending"
    assert theirs.json["authorizations"][0] not in first.json["authorizations"]


async def test_reuse_is_bounded_by_authz_reuse(harness: Harness) -> None:
    c = await harness.account()
    first = await harness.ready_order(c, "window.test")
    later = datetime.now(UTC) + timedelta(hours=9)  # acme.authz_reuse is 8h; authz_ttl 24h
    harness.ctx.orders.d.now = lambda: later
    again = await c.new_order("window.test")
    assert again.json["status"] == "pending", again.json
    assert again.json["authorizations"] != first.json["authorizations"]


async def test_authz_reuse_switched_off(make_harness: MakeHarness) -> None:
    h = await make_harness(acme={"authz_reuse": "0s"})
    c = await h.account()
    first = await h.ready_order(c, "noreuse.test")
    again = await c.new_order("noreuse.test")
    assert again.json["status"] == "pending"
    assert again.json["authorizations"] != first.json["authorizations"]


async def test_responding_to_valid_challenge_is_a_noop(harness: Harness) -> None:
    c = await harness.account()
    ready = await harness.ready_order(c, "noop.test")
    url = ready.json["authorizations"][0]
    ch = _http01((await c.post(url)).json)
    assert ch["status"] == "valid"
    harness.responder.tokens.clear()  # nothing served now: a re-validation would fail
    r = await c.post(ch["url"], {})
    assert r.status == 200
    assert r.json["status"] == "valid"
    assert r.json["validated"] == ch["validated"]
    assert "Retry-After" not in r.headers
    await harness.ctx.orders.drain()
    assert (await c.post(url)).json["status"] == "valid"
    # the sibling challenge of a valid authorization is not started either
    other = next(x for x in (await c.post(url)).json["challenges"] if x["type"] != "http-01")
    r = await c.post(other["url"], {})
    assert r.status == 200 and r.json["status"] == "pending"
