"""Replay nonces over HTTP (RFC 8555 §7.2, §6.5)."""
from __future__ import annotations

from support.harness import Harness
from support.acmeclient import assert_problem, jws


async def test_head_new_nonce(harness: Harness) -> None:
    r = await harness.http.head("/acme/new-nonce")
    assert r.status == 200
    assert r.headers["Replay-Nonce"]
    assert r.headers["Cache-Control"] == "no-store"
    assert 'rel="index"' in r.headers["Link"]


async def test_get_new_nonce(harness: Harness) -> None:
    r = await harness.http.get("/acme/new-nonce")
    assert r.status == 204
    assert r.headers["Replay-Nonce"]
    assert r.headers["Cache-Control"] == "no-store"


async def test_every_nonce_is_different(harness: Harness) -> None:
    seen = {(await harness.http.head("/acme/new-nonce")).headers["Replay-Nonce"] for _ in range(20)}
    assert len(seen) == 20


async def test_reused_nonce_is_bad_and_the_fresh_one_works(harness: Harness) -> None:
    c = await harness.account()
    nonce = await c.fresh_nonce()
    r = await c.post(c.kid, nonce=nonce)
    assert r.status == 200, r.body
    r = await c.post(c.kid, nonce=nonce)
    assert_problem(r, 400, "badNonce", "retry with the Replay-Nonce")
    fresh = r.headers["Replay-Nonce"]
    assert fresh != nonce
    r = await c.post(c.kid, nonce=fresh)
    assert r.status == 200 and r.json["status"] == "valid", r.body


async def test_made_up_nonce_is_bad(harness: Harness) -> None:
    c = await harness.client()
    r = await c.post(c.url("newAccount"), {"termsOfServiceAgreed": True}, kid=None,
                     nonce="bm90LWEtbm9uY2U")
    assert_problem(r, 400, "badNonce", "missing, used or expired")
    assert harness.ctx.store.get_account_by_thumbprint(c.key.thumbprint) is None


async def test_missing_nonce_is_bad(harness: Harness) -> None:
    c = await harness.client()
    body = jws(c.key, c.url("newAccount"), {"termsOfServiceAgreed": True}, nonce=None)
    r = await c.raw(c.url("newAccount"), body)
    assert_problem(r, 400, "badNonce", "missing, used or expired")


async def test_non_string_nonce_is_bad(harness: Harness) -> None:
    c = await harness.client()
    body = jws(c.key, c.url("newAccount"), {"termsOfServiceAgreed": True}, nonce=None,
               header={"nonce": 12345})
    r = await c.raw(c.url("newAccount"), body)
    assert_problem(r, 400, "badNonce", "missing, used or expired")


async def test_nonce_from_an_error_response_works(harness: Harness) -> None:
    c = await harness.client()
    r = await harness.http.get("/acme/nope")
    assert r.status == 404
    r = await c.post(c.url("newAccount"), {"termsOfServiceAgreed": True}, kid=None,
                     nonce=r.headers["Replay-Nonce"])
    assert r.status == 201, r.body


async def test_forged_request_does_not_burn_the_nonce(harness: Harness) -> None:
    """Signature checks run before the nonce is redeemed (server/jws.py module docstring)."""
    c = await harness.client()
    nonce = await c.fresh_nonce()
    r = await c.post(c.url("newAccount"), {"termsOfServiceAgreed": True}, kid=None, nonce=nonce,
                     alg="none")
    assert_problem(r, 400, "badSignatureAlgorithm")
    r = await c.post(c.url("newAccount"), {"termsOfServiceAgreed": True}, kid=None, nonce=nonce)
    assert r.status == 201, r.body
