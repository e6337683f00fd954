"""revokeCert (RFC 8555 §7.6): who may revoke, with which reason, and what follows."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from support.harness import Harness, assert_problem
from support.acmeclient import AcmeTestClient, Key, b64u, key_from_private


def _der(chain: bytes) -> bytes:
    return x509.load_pem_x509_certificate(chain).public_bytes(serialization.Encoding.DER)


def _stored_status(harness: Harness, chain: bytes) -> str:
    serial = format(x509.load_pem_x509_certificate(chain).serial_number, "x")
    cert = harness.ctx.store.get_certificate(serial)
    assert cert is not None
    return cert.status


async def _revoke(c: AcmeTestClient, chain: bytes, reason: Any = None, **kw: Any) -> Any:
    payload: dict[str, Any] = {"certificate": b64u(_der(chain))}
    if reason is not None:
        payload["reason"] = reason
    return await c.post(c.url("revokeCert"), payload, **kw)


async def test_issuing_account_revokes(harness: Harness) -> None:
    c = await harness.account()
    _, chain, _ = await harness.issue(c, "rev.test")
    r = await _revoke(c, chain, 1)
    assert r.status == 200, r.body
    assert r.body == b""
    assert r.headers["Replay-Nonce"]
    assert _stored_status(harness, chain) == "revoked"
    cert = harness.ctx.store.get_certificate(
        format(x509.load_pem_x509_certificate(chain).serial_number, "x"))
    assert cert is not None and cert.revocation_reason == 1


async def test_second_revocation_is_already_revoked(harness: Harness) -> None:
    c = await harness.account()
    _, chain, _ = await harness.issue(c, "twice.test")
    assert (await _revoke(c, chain)).status == 200
    r = await _revoke(c, chain, 4)
    assert_problem(r, 400, "alreadyRevoked", "already revoked")
    cert = harness.ctx.store.get_certificate(
        format(x509.load_pem_x509_certificate(chain).serial_number, "x"))
    assert cert is not None and cert.revocation_reason == 0  # the first revocation stands


async def test_account_holding_authorizations_for_all_names_revokes(harness: Harness) -> None:
    owner = await harness.account()
    _, chain, _ = await harness.issue(owner, "shared-a.test", "shared-b.test")
    other = await harness.account()
    await harness.ready_order(other, "shared-a.test", "shared-b.test")
    r = await _revoke(other, chain, 1)
    assert r.status == 200, r.body
    assert _stored_status(harness, chain) == "revoked"


async def test_account_holding_only_some_names_is_unauthorized(harness: Harness) -> None:
    owner = await harness.account()
    _, chain, _ = await harness.issue(owner, "part-a.test", "part-b.test")
    other = await harness.account()
    await harness.ready_order(other, "part-a.test")
    r = await _revoke(other, chain)
    assert_problem(r, 403, "unauthorized", "issuing account", "valid authorizations")
    assert _stored_status(harness, chain) == "valid"


async def test_unrelated_account_is_unauthorized(harness: Harness) -> None:
    owner = await harness.account()
    _, chain, _ = await harness.issue(owner, "unrelated.test")
    other = await harness.account()
    pending = await other.new_order("unrelated.test")  # a pending authz is no proof
    assert pending.json["status"] == "pending"
    r = await _revoke(other, chain)
    assert_problem(r, 403, "unauthorized", "issuing account")
    assert _stored_status(harness, chain) == "valid"


async def test_expired_authorizations_do_not_authorize_revocation(harness: Harness) -> None:
    owner = await harness.account()
    _, chain, _ = await harness.issue(owner, "stale.test")
    other = await harness.account()
    ready = await harness.ready_order(other, "stale.test")
    authz = (await other.post(ready.json["authorizations"][0])).json
    after = datetime.fromisoformat(authz["expires"].replace("Z", "+00:00")) + timedelta(seconds=1)
    harness.ctx.orders.d.now = lambda: after
    r = await _revoke(other, chain)
    assert_problem(r, 403, "unauthorized")
    assert _stored_status(harness, chain) == "valid"


@pytest.mark.parametrize("make_key", [
    lambda: ec.generate_private_key(ec.SECP256R1()),
    lambda: ed25519.Ed25519PrivateKey.generate(),
], ids=["p256", "ed25519"])
async def test_certificate_key_revokes_with_jwk(harness: Harness, make_key: Any) -> None:
    c = await harness.account()
    _, chain, cert_key = await harness.issue(c, "keyrev.test", key=make_key())
    stranger = await harness.client()  # no account at all
    r = await _revoke(stranger, chain, 1, key=key_from_private(cert_key), kid=None)
    assert r.status == 200, r.body
    assert _stored_status(harness, chain) == "revoked"


async def test_other_jwk_key_is_unauthorized(harness: Harness) -> None:
    c = await harness.account()
    _, chain, _ = await harness.issue(c, "otherkey.test")
    stranger = await harness.client()
    r = await _revoke(stranger, chain, key=Key(), kid=None)
    assert_problem(r, 403, "unauthorized", "certificate's key")
    # an account key signing with jwk does not count as the account either
    r = await _revoke(c, chain, kid=None)
    assert_problem(r, 403, "unauthorized", "certificate's key")
    assert _stored_status(harness, chain) == "valid"


@pytest.mark.parametrize("reason,ok", [(0, True), (1, True), (4, True), (5, True),
                                       (7, False), (2, False), (6, False), (8, False),
                                       (10, False), (-1, False), ("1", False), (True, False)])
async def test_revocation_reasons(harness: Harness, reason: Any, ok: bool) -> None:
    c = await harness.account()
    _, chain, _ = await harness.issue(c, "reason.test")
    r = await _revoke(c, chain, reason)
    if ok:
        assert r.status == 200, r.body
        assert _stored_status(harness, chain) == "revoked"
    else:
        assert_problem(r, 400, "badRevocationReason", repr(reason), "keyCompromise")
        assert _stored_status(harness, chain) == "valid"


async def test_unknown_certificate_is_not_found(harness: Harness) -> None:
    c = await harness.account()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([])
    now = datetime.now(UTC)
    foreign = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + timedelta(hours=1))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName("x.test")]), True)
               .sign(key, hashes.SHA256()))
    r = await c.post(c.url("revokeCert"),
                     {"certificate": b64u(foreign.public_bytes(serialization.Encoding.DER))})
    assert_problem(r, 404, "malformed", "did not issue")


async def test_same_serial_different_certificate_is_not_found(harness: Harness) -> None:
    """A certificate that only copies one of ours' serial number is not ours."""
    c = await harness.account()
    _, chain, _ = await harness.issue(c, "copy.test")
    ours = x509.load_pem_x509_certificate(chain)
    key = ec.generate_private_key(ec.SECP256R1())
    forged = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ours.issuer)
              .public_key(key.public_key()).serial_number(ours.serial_number)
              .not_valid_before(ours.not_valid_before_utc).not_valid_after(ours.not_valid_after_utc)
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("copy.test")]), True)
              .sign(key, hashes.SHA256()))
    r = await _revoke(c, forged.public_bytes(serialization.Encoding.PEM),
                      key=key_from_private(key), kid=None)
    assert_problem(r, 404, "malformed", "did not issue")
    assert _stored_status(harness, chain) == "valid"


@pytest.mark.parametrize("payload,fragment", [
    ({}, "certificate"),
    ({"certificate": 5}, "certificate"),
    ({"certificate": b64u(b"not der")}, "not DER"),
])
async def test_malformed_revocation_requests(harness: Harness, payload: dict[str, Any],
                                             fragment: str) -> None:
    c = await harness.account()
    r = await c.post(c.url("revokeCert"), payload)
    assert_problem(r, 400, "malformed", fragment)
