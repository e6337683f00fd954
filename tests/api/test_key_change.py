"""Account key rollover (RFC 8555 §7.3.5)."""
from __future__ import annotations

import json

import pytest

from support.harness import Harness
from support.acmeclient import AcmeTestClient, Key, assert_problem, b64u, key_change_inner


async def roll(c: AcmeTestClient, new: Key, **kw: object) -> object:
    url = c.url("keyChange")
    inner = key_change_inner(new, str(kw.pop("inner_url", url)),
                             str(kw.pop("account", c.kid)),
                             kw.pop("old_jwk", c.key.jwk), **kw)  # type: ignore[arg-type]
    return await c.post(url, inner)


async def test_key_change_success(harness: Harness) -> None:
    c = await harness.account()
    old, new = c.key, Key("ec-p256")
    r = await roll(c, new)
    assert r.status == 200, r.body  # type: ignore[attr-defined]
    assert r.location == c.kid  # type: ignore[attr-defined]
    # The old key is refused ...
    r = await c.post(c.kid)
    assert_problem(r, 400, "malformed", "signature is invalid")
    # ... the new key works for the same account ...
    c.key = new
    r = await c.post(c.kid)
    assert r.status == 200 and r.json["status"] == "valid", r.body
    acct = harness.ctx.store.get_account_by_thumbprint(new.thumbprint)
    assert acct is not None and c.kid.endswith("/" + acct.id)
    assert harness.ctx.store.get_account_by_thumbprint(old.thumbprint) is None
    # ... and newAccount with the new key finds the account, with the old key makes a new one.
    lookup = await harness.client(new)
    r = await lookup.new_account(onlyReturnExisting=True)
    assert r.status == 200 and r.location == c.kid
    fresh = await harness.client(old)
    r = await fresh.new_account()
    assert r.status == 201 and r.location != c.kid


async def test_key_change_to_every_key_type(harness: Harness) -> None:
    c = await harness.account()
    for kind in ("rsa-2048", "ed25519", "ec-p256"):
        new = Key(kind)
        r = await roll(c, new)
        assert r.status == 200, r.body  # type: ignore[attr-defined]
        c.key = new
        assert (await c.post(c.kid)).status == 200


async def test_inner_jws_signed_with_kid(harness: Harness) -> None:
    c = await harness.account()
    r = await roll(c, Key(), kid=c.kid)
    assert_problem(r, 400, "malformed", "must carry the new key as jwk, not kid")  # type: ignore[arg-type]


async def test_inner_url_must_equal_outer_url(harness: Harness) -> None:
    c = await harness.account()
    r = await roll(c, Key(), inner_url=c.url("newAccount"))
    assert_problem(r, 400, "malformed", "inner JWS url must equal the outer url")  # type: ignore[arg-type]


async def test_old_key_must_be_the_current_key(harness: Harness) -> None:
    c = await harness.account()
    r = await roll(c, Key(), old_jwk=Key().jwk)
    assert_problem(r, 400, "malformed", "oldKey is not the account's current key")  # type: ignore[arg-type]
    r = await roll(c, Key(), old_jwk={"kty": "EC"})
    assert_problem(r, 400, "malformed", "oldKey is not the account's current key")  # type: ignore[arg-type]
    assert (await c.post(c.kid)).status == 200  # still the old key


async def test_account_must_be_the_signing_account(harness: Harness) -> None:
    c = await harness.account()
    other = await harness.account()
    r = await roll(c, Key(), account=other.kid)
    assert_problem(r, 400, "malformed", "account does not match the signing account")  # type: ignore[arg-type]


async def test_new_key_of_another_account_is_a_conflict(harness: Harness) -> None:
    c = await harness.account()
    other = await harness.account()
    r = await roll(c, other.key)
    doc = assert_problem(r, 409, "conflict", "already belongs to another account")  # type: ignore[arg-type]
    assert r.location == other.kid  # type: ignore[attr-defined]  # §7.3.5: Location of that account
    assert "account" not in doc or doc["account"] in other.kid
    assert (await c.post(c.kid)).status == 200
    assert (await other.post(other.kid)).status == 200


async def test_new_key_equal_to_old_key(harness: Harness) -> None:
    c = await harness.account()
    r = await roll(c, c.key)
    assert_problem(r, 400, "malformed", "new key equals the old key")  # type: ignore[arg-type]


async def test_inner_signature_must_verify(harness: Harness) -> None:
    c = await harness.account()
    new = Key()
    inner = key_change_inner(new, c.url("keyChange"), c.kid, c.key.jwk)
    inner["payload"] = b64u(json.dumps({"account": c.kid, "oldKey": Key().jwk}).encode())
    r = await c.post(c.url("keyChange"), inner)
    assert_problem(r, 400, "malformed", "signature is invalid")
    assert harness.ctx.store.get_account_by_thumbprint(new.thumbprint) is None


async def test_inner_weak_key_is_refused(harness: Harness) -> None:
    c = await harness.account()
    r = await roll(c, Key("rsa-1024"))
    assert_problem(r, 400, "badPublicKey", "too small")  # type: ignore[arg-type]


@pytest.mark.parametrize("payload, detail", [
    (None, "needs an inner JWS"),
    ({"not": "a jws"}, "missing"),
])
async def test_outer_payload_must_be_a_jws(harness: Harness, payload: object, detail: str) -> None:
    c = await harness.account()
    r = await c.post(c.url("keyChange"), payload)
    assert_problem(r, 400, "malformed", detail)


async def test_key_change_must_be_signed_with_kid(harness: Harness) -> None:
    c = await harness.account()
    inner = key_change_inner(Key(), c.url("keyChange"), c.kid, c.key.jwk)
    r = await c.post(c.url("keyChange"), inner, kid=None)
    assert_problem(r, 400, "malformed", "must be signed by an account (kid)")
