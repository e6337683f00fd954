"""The JWS request pipeline (RFC 8555 §6.2-6.4): every broken request is refused with the
right problem document, a fresh Replay-Nonce and the index link; no traceback ever leaks."""
from __future__ import annotations

import json

import pytest

from support.harness import Harness, MakeHarness
from support.acmeclient import Key, assert_problem, b64u, jws, signed_body


async def test_alg_none_is_refused(harness: Harness) -> None:
    c = await harness.client()
    r = await c.post(c.url("newAccount"), {"termsOfServiceAgreed": True}, kid=None, alg="none")
    doc = assert_problem(r, 400, "badSignatureAlgorithm", "'none' is not accepted")
    assert doc["algorithms"] == ["ES256", "ES384", "RS256", "EdDSA"]


async def test_hmac_alg_is_refused(harness: Harness) -> None:
    c = await harness.client()
    r = await c.post(c.url("newAccount"), {"termsOfServiceAgreed": True}, kid=None, alg="HS256")
    assert_problem(r, 400, "badSignatureAlgorithm", "'HS256' is not accepted")


async def test_rsa_1024_is_a_bad_public_key(harness: Harness) -> None:
    c = await harness.client(Key("rsa-1024"))
    r = await c.new_account()
    assert_problem(r, 400, "badPublicKey", "1024 bits is too small")


async def test_alg_must_match_the_key(harness: Harness) -> None:
    c = await harness.client(Key("ec-p256"))
    r = await c.post(c.url("newAccount"), {"termsOfServiceAgreed": True}, kid=None, alg="ES384")
    assert_problem(r, 400, "badSignatureAlgorithm", "ES384 does not match the secp256r1 key")


async def test_private_key_material_in_jwk_is_refused(harness: Harness) -> None:
    c = await harness.client()
    r = await c.post(c.url("newAccount"), {"termsOfServiceAgreed": True}, kid=None,
                     header={"jwk": {**c.key.jwk, "d": b64u(b"\x01" * 32)}})
    assert_problem(r, 400, "badPublicKey", "private key material")


async def test_url_header_must_match_request_url(harness: Harness) -> None:
    c = await harness.client()
    body = await signed_body(c, c.url("newOrder"), {"termsOfServiceAgreed": True}, kid=None)
    r = await c.raw(c.url("newAccount"), body)
    assert_problem(r, 403, "unauthorized", "does not match the request URL")


async def test_jwk_and_kid_together_are_refused(harness: Harness) -> None:
    c = await harness.account()
    r = await c.post(c.kid, None, use_jwk=True)  # kid from the client plus jwk
    assert_problem(r, 400, "malformed", "exactly one of jwk and kid")


async def test_neither_jwk_nor_kid_is_refused(harness: Harness) -> None:
    c = await harness.client()
    r = await c.post(c.url("newAccount"), {"termsOfServiceAgreed": True}, kid=None, use_jwk=False)
    assert_problem(r, 400, "malformed", "exactly one of jwk and kid")


async def test_kid_of_unknown_account(harness: Harness) -> None:
    c = await harness.client()
    r = await c.post(c.url("newOrder"), {"identifiers": []},
                     kid="http://test.invalid/acme/acct/nosuchaccount")
    assert_problem(r, 400, "accountDoesNotExist", "no account at")
    r = await c.post(c.url("newOrder"), {"identifiers": []}, kid="https://elsewhere.test/acct/1")
    assert_problem(r, 400, "accountDoesNotExist", "no account at")


async def test_kid_of_deactivated_account(harness: Harness) -> None:
    c = await harness.account()
    r = await c.post(c.kid, {"status": "deactivated"})
    assert r.status == 200 and r.json["status"] == "deactivated"
    r = await c.new_order("after.test")
    assert_problem(r, 403, "unauthorized", "the account is deactivated")


async def test_tampered_payload_fails_signature(harness: Harness) -> None:
    c = await harness.client()
    body = await signed_body(c, c.url("newAccount"), {"termsOfServiceAgreed": True}, kid=None)
    body["payload"] = b64u(json.dumps({"termsOfServiceAgreed": True, "contact": []}).encode())
    r = await c.raw(c.url("newAccount"), body)
    assert_problem(r, 400, "malformed", "signature is invalid")


async def test_signature_of_other_key_fails(harness: Harness) -> None:
    c = await harness.client()
    other = Key()
    body = await signed_body(c, c.url("newAccount"), {"termsOfServiceAgreed": True}, kid=None,
                             key=other, header={"jwk": c.key.jwk})
    r = await c.raw(c.url("newAccount"), body)
    assert_problem(r, 400, "malformed", "signature is invalid")


async def test_unprotected_header_is_refused(harness: Harness) -> None:
    c = await harness.client()
    body: dict = dict(await signed_body(c, c.url("newAccount"), {}, kid=None))
    body["header"] = {"kid": "x"}
    r = await c.raw(c.url("newAccount"), body)
    assert_problem(r, 400, "malformed", "unprotected header is not allowed")


async def test_general_serialization_is_refused(harness: Harness) -> None:
    c = await harness.client()
    flat = await signed_body(c, c.url("newAccount"), {}, kid=None)
    body = {"payload": flat["payload"],
            "signatures": [{"protected": flat["protected"], "signature": flat["signature"]}]}
    r = await c.raw(c.url("newAccount"), body)
    assert_problem(r, 400, "malformed", "multiple signatures is not allowed")


async def test_unencoded_payload_is_refused(harness: Harness) -> None:
    c = await harness.client()
    r = await c.post(c.url("newAccount"), {"termsOfServiceAgreed": True}, kid=None,
                     header={"b64": False, "crit": ["b64"]})
    assert_problem(r, 400, "malformed", "unencoded payload option is not allowed")


@pytest.mark.parametrize("raw, detail", [
    (b"this is not json", "request body is not JSON"),
    (b"[1, 2, 3]", "not a JWS object"),
    (b'{"protected": "e30", "payload": ""}', "missing signature"),
    (b'{"protected": "bm90IGpzb24", "payload": "", "signature": ""}', "protected header is not JSON"),
    (b'{"protected": 5, "payload": "", "signature": ""}', "must be strings"),
    (b'{"protected": "e30", "payload": "", "signature": ""}', "has no alg"),
    (b"[" * 20000 + b"]" * 20000, "request body is not JSON"),
    (b"\xff\xfe\x00garbage", "request body is not JSON"),
])
async def test_malformed_bodies(harness: Harness, raw: bytes, detail: str) -> None:
    c = await harness.client()
    r = await c.raw(c.url("newAccount"), raw)
    assert_problem(r, 400, "malformed", detail)


async def test_payload_that_is_not_json(harness: Harness) -> None:
    c = await harness.client()
    r = await c.post(c.url("newAccount"), b"not json", kid=None)
    assert_problem(r, 400, "malformed", "payload is not JSON")
    r = await c.post(c.url("newAccount"), b"[1]", kid=None)
    assert_problem(r, 400, "malformed", "payload is not a JSON object")


async def test_wrong_content_type_is_415(harness: Harness) -> None:
    c = await harness.client()
    body = await signed_body(c, c.url("newAccount"), {"termsOfServiceAgreed": True}, kid=None)
    r = await c.raw(c.url("newAccount"), body, content_type="application/json")
    assert_problem(r, 415, "malformed", "Content-Type must be application/jose+json")
    # The nonce was not spent by the refused request: the same body with the right type works.
    r = await c.raw(c.url("newAccount"), body)
    assert r.status == 201, r.body


async def test_oversized_body_is_a_413_problem(make_harness: MakeHarness) -> None:
    h = await make_harness(acme={"max_body_bytes": 2048})
    c = await h.client()
    r = await c.post(c.url("newAccount"),
                     {"termsOfServiceAgreed": True, "pad": "x" * 4096}, kid=None)
    assert_problem(r, 413, "malformed", "too large")
    assert b"Traceback" not in r.body
    # A request under the limit still works.
    r = await c.new_account()
    assert r.status == 201, r.body


async def test_new_account_must_use_jwk(harness: Harness) -> None:
    c = await harness.account()
    r = await c.post(c.url("newAccount"), {"termsOfServiceAgreed": True})  # signed with kid
    assert_problem(r, 400, "malformed", "must be signed with the key itself (jwk)")


async def test_new_order_must_use_kid(harness: Harness) -> None:
    c = await harness.account()
    r = await c.post(c.url("newOrder"), {"identifiers": [{"type": "dns", "value": "a.test"}]},
                     kid=None)
    assert_problem(r, 400, "malformed", "must be signed by an account (kid)")


@pytest.mark.parametrize("kind, alg", [
    ("ec-p256", "ES256"), ("ec-p384", "ES384"), ("rsa-2048", "RS256"), ("ed25519", "EdDSA"),
])
async def test_every_accepted_algorithm_creates_an_account(harness: Harness, kind: str,
                                                           alg: str) -> None:
    key = Key(kind)
    assert key.alg == alg
    c = await harness.client(key)
    r = await c.new_account()
    assert r.status == 201, r.body
    assert r.location.startswith("http://test.invalid/acme/acct/")
    # ... and the account key signs kid requests too.
    r = await c.post(c.kid)
    assert r.status == 200 and r.json["status"] == "valid", r.body
    assert harness.ctx.store.get_account_by_thumbprint(key.thumbprint) is not None


async def test_unknown_route_is_a_problem_document(harness: Harness) -> None:
    r = await harness.http.get("/acme/nope")
    assert r.status == 404
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert r.headers["Replay-Nonce"]
    doc = await r.json(content_type=None)
    assert doc["type"] == "urn:ietf:params:acme:error:malformed"


async def test_signed_url_with_equivalent_encoding_is_accepted(harness: Harness) -> None:
    """The orders list's next link carries a query; any equivalent spelling of it verifies."""
    c = await harness.account()
    url = c.kid + "/orders?cursor=a%3Ab"
    body = jws(c.key, url, None, nonce=await c.fresh_nonce(), kid=c.kid)
    r = await c.raw(c.kid + "/orders?cursor=a:b", body)
    assert r.status == 200, r.body


async def test_unknown_critical_header_is_refused(harness: Harness) -> None:
    c = await harness.client()
    r = await c.post(c.url("newAccount"), {"termsOfServiceAgreed": True}, kid=None,
                     header={"crit": ["exp"], "exp": 1})
    assert_problem(r, 400, "malformed", "crit header parameter is not supported")


async def test_get_on_a_post_resource_is_405_with_allow(harness: Harness) -> None:
    r = await harness.http.get("/acme/new-account")
    assert r.status == 405
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert "POST" in r.headers["Allow"]
    assert r.headers["Replay-Nonce"]
    doc = await r.json(content_type=None)
    assert doc["type"] == "urn:ietf:params:acme:error:malformed"
    assert "method not allowed" in doc["detail"]
