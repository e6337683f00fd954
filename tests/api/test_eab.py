"""External account binding (RFC 8555 §7.3.4)."""
from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone

import pytest

from support.harness import Harness, MakeHarness
from server.models import EabKey
from support.acmeclient import Key, assert_problem, b64u, eab_binding, hmac_jws


def add_key(h: Harness, kid: str | None = None) -> tuple[str, bytes]:
    kid = kid or "kid-" + secrets.token_hex(4)
    mac = secrets.token_bytes(32)
    h.ctx.store.insert_eab_key(EabKey(kid=kid, hmac_key=mac, created_at=datetime.now(timezone.utc)))
    return kid, mac


@pytest.fixture
async def eab_harness(make_harness: MakeHarness) -> Harness:
    return await make_harness(acme={"external_account_binding": "required"})


async def test_directory_says_external_account_required(eab_harness: Harness) -> None:
    d = await (await eab_harness.http.get("/acme/directory")).json()
    assert d["meta"]["externalAccountRequired"] is True


async def test_new_account_without_binding_is_refused(eab_harness: Harness) -> None:
    c = await eab_harness.client()
    r = await c.new_account()
    assert_problem(r, 403, "externalAccountRequired", "requires an external account binding")
    assert eab_harness.ctx.store.get_account_by_thumbprint(c.key.thumbprint) is None


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_correct_binding_creates_and_binds(eab_harness: Harness, alg: str) -> None:
    kid, mac = add_key(eab_harness)
    c = await eab_harness.client()
    r = await c.new_account(externalAccountBinding=eab_binding(kid, mac, c.key.jwk,
                                                               c.url("newAccount"), alg=alg))
    assert r.status == 201, r.body
    acct = eab_harness.ctx.store.get_account_by_thumbprint(c.key.thumbprint)
    assert acct is not None and acct.eab_kid == kid
    key = eab_harness.ctx.store.get_eab_key(kid)
    assert key is not None and key.account_id == acct.id
    assert r.location.endswith("/" + acct.id)


async def test_bound_kid_cannot_bind_another_account(eab_harness: Harness) -> None:
    kid, mac = add_key(eab_harness)
    a = await eab_harness.client()
    r = await a.new_account(externalAccountBinding=eab_binding(kid, mac, a.key.jwk,
                                                               a.url("newAccount")))
    assert r.status == 201
    b = await eab_harness.client()
    r = await b.new_account(externalAccountBinding=eab_binding(kid, mac, b.key.jwk,
                                                               b.url("newAccount")))
    assert_problem(r, 403, "unauthorized", "already bound to an account")
    assert eab_harness.ctx.store.get_account_by_thumbprint(b.key.thumbprint) is None
    # The first account's key again is a lookup, not a new binding.
    again = await eab_harness.client(a.key)
    r = await again.new_account()
    assert r.status == 200 and r.location == a.kid


async def test_wrong_mac_is_unauthorized(eab_harness: Harness) -> None:
    kid, _ = add_key(eab_harness)
    c = await eab_harness.client()
    r = await c.new_account(externalAccountBinding=eab_binding(
        kid, secrets.token_bytes(32), c.key.jwk, c.url("newAccount")))
    assert_problem(r, 403, "unauthorized", "MAC does not verify")
    key = eab_harness.ctx.store.get_eab_key(kid)
    assert key is not None and key.account_id is None


async def test_unknown_kid_is_unauthorized(eab_harness: Harness) -> None:
    c = await eab_harness.client()
    r = await c.new_account(externalAccountBinding=eab_binding(
        "no-such-kid", secrets.token_bytes(32), c.key.jwk, c.url("newAccount")))
    assert_problem(r, 403, "unauthorized", "'no-such-kid' is unknown or revoked")


async def test_revoked_kid_is_unauthorized(eab_harness: Harness) -> None:
    kid, mac = add_key(eab_harness)
    assert eab_harness.ctx.store.revoke_eab_key(kid)
    c = await eab_harness.client()
    r = await c.new_account(externalAccountBinding=eab_binding(kid, mac, c.key.jwk,
                                                               c.url("newAccount")))
    assert_problem(r, 403, "unauthorized", "unknown or revoked")


async def test_binding_url_must_be_new_account(eab_harness: Harness) -> None:
    kid, mac = add_key(eab_harness)
    c = await eab_harness.client()
    r = await c.new_account(externalAccountBinding=eab_binding(kid, mac, c.key.jwk,
                                                               c.url("newOrder")))
    assert_problem(r, 400, "malformed", "url must be the newAccount URL")


async def test_binding_payload_must_be_the_account_key(eab_harness: Harness) -> None:
    kid, mac = add_key(eab_harness)
    c = await eab_harness.client()
    r = await c.new_account(externalAccountBinding=eab_binding(kid, mac, Key().jwk,
                                                               c.url("newAccount")))
    assert_problem(r, 400, "malformed", "payload is not the account key")
    key = eab_harness.ctx.store.get_eab_key(kid)
    assert key is not None and key.account_id is None


@pytest.mark.parametrize("payload, detail", [
    (b"not json", "payload is not a JWK"),
    (json.dumps({"kty": "EC"}).encode(), "not the account key"),
    (json.dumps({"kty": "oct", "k": "AAAA"}).encode(), "not the account key"),
    (json.dumps(["a"]).encode(), "not the account key"),
    (b"[" * 5000 + b"]" * 5000, "payload is not a JWK"),
])
async def test_binding_payload_that_is_not_a_key(eab_harness: Harness, payload: bytes,
                                                 detail: str) -> None:
    kid, mac = add_key(eab_harness)
    c = await eab_harness.client()
    eab = hmac_jws(mac, {"alg": "HS256", "kid": kid, "url": c.url("newAccount")}, payload)
    r = await c.new_account(externalAccountBinding=eab)
    assert_problem(r, 400, "malformed", detail)


@pytest.mark.parametrize("header, detail", [
    ({"alg": "ES256"}, "is not HS256/HS384/HS512"),
    ({"alg": "none"}, "is not HS256/HS384/HS512"),
    ({"kid": 5}, "has no kid"),
    ({"nonce": "abc"}, "must not carry a nonce"),
])
async def test_binding_header_checks(eab_harness: Harness, header: dict, detail: str) -> None:
    kid, mac = add_key(eab_harness)
    c = await eab_harness.client()
    r = await c.new_account(externalAccountBinding=eab_binding(
        kid, mac, c.key.jwk, c.url("newAccount"), header=header))
    assert_problem(r, 400, "malformed", detail)


@pytest.mark.parametrize("eab, detail", [
    ("a string", "must be a flattened JWS object"),
    ({"protected": "e30", "payload": "e30"}, "must be a flattened JWS object"),
    ({"protected": b64u(b"nope"), "payload": "", "signature": ""}, "protected header is not JSON"),
    ({"protected": b64u(b"[]"), "payload": "", "signature": ""}, "is not an object"),
    ({"protected": b64u(b"[" * 5000 + b"]" * 5000), "payload": "", "signature": ""},
     "protected header is not JSON"),
])
async def test_binding_structure(eab_harness: Harness, eab: object, detail: str) -> None:
    c = await eab_harness.client()
    r = await c.new_account(externalAccountBinding=eab)
    assert_problem(r, 400, "malformed", detail)


async def test_optional_mode_accepts_both(make_harness: MakeHarness) -> None:
    h = await make_harness(acme={"external_account_binding": "optional"})
    d = await (await h.http.get("/acme/directory")).json()
    assert "externalAccountRequired" not in d["meta"]
    plain = await h.client()
    r = await plain.new_account()
    assert r.status == 201, r.body
    assert h.ctx.store.get_account_by_thumbprint(plain.key.thumbprint).eab_kid is None  # type: ignore[union-attr]
    kid, mac = add_key(h)
    bound = await h.client()
    r = await bound.new_account(externalAccountBinding=eab_binding(kid, mac, bound.key.jwk,
                                                                   bound.url("newAccount")))
    assert r.status == 201, r.body
    assert h.ctx.store.get_account_by_thumbprint(bound.key.thumbprint).eab_kid == kid  # type: ignore[union-attr]
    # A binding that is sent is checked even when optional.
    bad = await h.client()
    r = await bad.new_account(externalAccountBinding=eab_binding(kid, b"wrong", bad.key.jwk,
                                                                 bad.url("newAccount")))
    assert_problem(r, 403, "unauthorized")


async def test_off_mode_ignores_a_binding(harness: Harness) -> None:
    kid, mac = add_key(harness)
    c = await harness.client()
    r = await c.new_account(externalAccountBinding=eab_binding(kid, b"garbage", c.key.jwk,
                                                               c.url("newAccount")))
    assert r.status == 201, r.body
    acct = harness.ctx.store.get_account_by_thumbprint(c.key.thumbprint)
    assert acct is not None and acct.eab_kid is None
    key = harness.ctx.store.get_eab_key(kid)
    assert key is not None and key.account_id is None
