"""server.jws without a server: parsing, keys, thumbprints, signature checks."""
from __future__ import annotations

import json

import pytest

from server.errors import AcmeProblem
from server.jws import key_from_jwk, parse_jws, payload_json, public_jwk, thumbprint, verify_signature
from support.acmeclient import Key, b64u, jws


def problem(fn, *args) -> AcmeProblem:  # type: ignore[no-untyped-def]
    with pytest.raises(AcmeProblem) as info:
        fn(*args)
    return info.value


@pytest.mark.parametrize("kind", ["ec-p256", "ec-p384", "rsa-2048", "ed25519"])
def test_sign_and_verify_round_trip(kind: str) -> None:
    key = Key(kind)
    parsed = parse_jws(json.dumps(jws(key, "https://x/acme/new-account", {"a": 1},
                                      nonce="n")).encode())
    assert parsed.alg == key.alg and parsed.protected["nonce"] == "n"
    verify_signature(parsed, key_from_jwk(key.jwk))
    assert payload_json(parsed) == {"a": 1}


def test_signature_by_another_key_fails() -> None:
    key, other = Key(), Key()
    parsed = parse_jws(json.dumps(jws(key, "u", {}, nonce="n")).encode())
    p = problem(verify_signature, parsed, key_from_jwk(other.jwk))
    assert p.code == "malformed" and "signature is invalid" in p.detail


def test_wrong_length_ecdsa_signature() -> None:
    key = Key("ec-p256")
    body = jws(key, "u", {}, nonce="n")
    body["signature"] = b64u(b"\x01" * 63)
    p = problem(verify_signature, parse_jws(json.dumps(body).encode()), key_from_jwk(key.jwk))
    assert p.code == "malformed" and "wrong length" in p.detail


@pytest.mark.parametrize("kind, alg", [("rsa-2048", "ES256"), ("ed25519", "RS256"),
                                       ("ec-p384", "ES256")])
def test_alg_must_match_key_type(kind: str, alg: str) -> None:
    key = Key(kind)
    parsed = parse_jws(json.dumps(jws(key, "u", {}, nonce="n", alg=alg)).encode())
    p = problem(verify_signature, parsed, key_from_jwk(key.jwk))
    assert p.code == "badSignatureAlgorithm" and "does not match" in p.detail


@pytest.mark.parametrize("alg", ["none", "HS256", "HS512", "ES512", "PS256", "RS384"])
def test_refused_algorithms(alg: str) -> None:
    p = problem(parse_jws, json.dumps(jws(Key(), "u", {}, nonce="n", alg=alg)).encode())
    assert p.code == "badSignatureAlgorithm" and repr(alg) in p.detail
    assert p.extra["algorithms"] == ["ES256", "ES384", "RS256", "EdDSA"]


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    p = problem(parse_jws, b"[" * 100_000 + b"]" * 100_000)
    assert p.code == "malformed" and "not JSON" in p.detail


@pytest.mark.parametrize("jwk, detail", [
    ({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}, "curve 'P-521' is not accepted"),
    ({"kty": "EC", "crv": "P-256", "x": b64u(b"\x01" * 31), "y": b64u(b"\x01" * 32)},
     "wrong length"),
    ({"kty": "EC", "crv": "P-256", "x": b64u(b"\x01" * 32), "y": b64u(b"\x02" * 32)},
     "invalid public key"),  # not on the curve
    ({"kty": "OKP", "crv": "X25519", "x": b64u(b"\x01" * 32)}, "'X25519' is not accepted"),
    ({"kty": "OKP", "crv": "Ed25519", "x": b64u(b"\x01" * 31)}, "invalid public key"),
    ({"kty": "oct", "k": "AAAA"}, "key type 'oct' is not accepted"),
    ({**Key().jwk, "d": "AAAA"}, "private key material"),
])
def test_bad_public_keys(jwk: dict, detail: str) -> None:
    p = problem(key_from_jwk, jwk)
    assert p.code == "badPublicKey" and detail in p.detail


def test_rsa_minimum_size() -> None:
    p = problem(key_from_jwk, Key("rsa-1024").jwk)
    assert p.code == "badPublicKey" and "1024 bits is too small (minimum 2048)" in p.detail


def test_rfc7638_thumbprint_example() -> None:
    """RFC 7638 §3.1: members other than the required ones are ignored."""
    jwk = {"kty": "RSA", "alg": "RS256", "kid": "2011-04-29", "e": "AQAB",
           "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc"
                "_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQ"
                "R0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bF"
                "TWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert public_jwk(jwk) == {"kty": "RSA", "n": jwk["n"], "e": "AQAB"}


@pytest.mark.parametrize("kind", ["ec-p256", "ec-p384", "rsa-2048", "ed25519"])
def test_thumbprint_matches_the_client(kind: str) -> None:
    key = Key(kind)
    assert thumbprint(key.jwk) == key.thumbprint


@pytest.mark.parametrize("jwk", [{"kty": "EC"}, {"kty": "RSA", "n": "AQAB"},
                                 {"kty": "OKP", "crv": "Ed25519", "x": 5}])
def test_thumbprint_of_incomplete_jwk_is_a_problem(jwk: dict) -> None:
    p = problem(thumbprint, jwk)
    assert p.code == "badPublicKey" and "lacks" in p.detail
