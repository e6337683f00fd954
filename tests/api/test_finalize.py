"""Finalize (RFC 8555 §7.4): order state, CSR checks, key policy, issuance."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from support.harness import Harness, MakeHarness, assert_problem
from support.acmeclient import Key, b64u, csr_der


def _tamper_signature(der: bytes) -> bytes:
    """Flip a bit in the last byte of the DER, i.e. inside the signature BIT STRING."""
    return der[:-1] + bytes([der[-1] ^ 0x01])


async def test_finalize_before_ready_is_order_not_ready(harness: Harness) -> None:
    c = await harness.account()
    r = await c.new_order("early.test")
    der, _ = csr_der(["early.test"])
    fin = await c.post(r.json["finalize"], {"csr": b64u(der)})
    assert_problem(fin, 403, "orderNotReady", "pending", "not ready")
    assert (await c.post(r.location)).json["status"] == "pending"


async def test_successful_finalize(harness: Harness) -> None:
    c = await harness.account()
    order = await harness.ready_order(c, "ok.test")
    der, key = csr_der(["ok.test"])
    fin = await c.post(order.json["finalize"], {"csr": b64u(der)})
    assert fin.status == 200, fin.body
    assert fin.location == order.location
    assert fin.json["status"] == "valid"
    assert fin.json["certificate"].startswith("http://test.invalid/acme/cert/")
    assert "Retry-After" not in fin.headers
    got = (await c.post(order.location)).json
    assert got["status"] == "valid" and got["certificate"] == fin.json["certificate"]
    leaf = x509.load_pem_x509_certificates((await c.post(fin.json["certificate"])).body)[0]
    assert leaf.public_key() == key.public_key()


async def test_finalize_twice_is_order_not_ready(harness: Harness) -> None:
    c = await harness.account()
    fin, _, _ = await harness.issue(c, "twice.test")
    der, _ = csr_der(["twice.test"])
    again = await c.post(fin.json["finalize"], {"csr": b64u(der)})
    assert_problem(again, 403, "orderNotReady", "valid")


async def test_csr_with_extra_name_is_bad_csr(harness: Harness) -> None:
    c = await harness.account()
    order = await harness.ready_order(c, "one.test")
    der, _ = csr_der(["one.test", "extra.test"])
    fin = await c.post(order.json["finalize"], {"csr": b64u(der)})
    assert_problem(fin, 400, "badCSR", "extra.test, one.test", "(one.test)")
    assert (await c.post(order.location)).json["status"] == "ready"  # may try again


async def test_csr_missing_a_name_is_bad_csr(harness: Harness) -> None:
    c = await harness.account()
    order = await harness.ready_order(c, "a.test", "b.test")
    der, _ = csr_der(["a.test"])
    fin = await c.post(order.json["finalize"], {"csr": b64u(der)})
    assert_problem(fin, 400, "badCSR", "(a.test)", "(a.test, b.test)")


async def test_csr_names_are_compared_case_insensitively(harness: Harness) -> None:
    c = await harness.account()
    order = await harness.ready_order(c, "case.test")
    der, _ = csr_der(["CASE.test"])
    fin = await c.post(order.json["finalize"], {"csr": b64u(der)})
    assert fin.status == 200 and fin.json["status"] == "valid", fin.body


async def test_csr_with_bad_signature_is_bad_csr(harness: Harness) -> None:
    c = await harness.account()
    order = await harness.ready_order(c, "sig.test")
    der, _ = csr_der(["sig.test"])
    fin = await c.post(order.json["finalize"], {"csr": b64u(_tamper_signature(der))})
    assert_problem(fin, 400, "badCSR", "signature")


async def test_rsa_1024_is_bad_csr(harness: Harness) -> None:
    c = await harness.account()
    order = await harness.ready_order(c, "weak.test")
    der, _ = csr_der(["weak.test"], rsa.generate_private_key(65537, 1024))
    fin = await c.post(order.json["finalize"], {"csr": b64u(der)})
    assert_problem(fin, 400, "badCSR", "rsa-1024", "acme.allowed_keys")


async def test_key_type_outside_allowed_keys(make_harness: MakeHarness) -> None:
    h = await make_harness(acme={"allowed_keys": ["ec-p256"]})
    c = await h.account()
    order = await h.ready_order(c, "p384.test")
    der, _ = csr_der(["p384.test"], ec.generate_private_key(ec.SECP384R1()))
    fin = await c.post(order.json["finalize"], {"csr": b64u(der)})
    assert_problem(fin, 400, "badCSR", "ec-p384", "acme.allowed_keys")


async def test_account_key_as_certificate_key_is_bad_csr(harness: Harness) -> None:
    key = Key()
    c = await harness.account(key)
    order = await harness.ready_order(c, "acctkey.test")
    der, _ = csr_der(["acctkey.test"], key.priv)
    fin = await c.post(order.json["finalize"], {"csr": b64u(der)})
    assert_problem(fin, 400, "badCSR", "account key")


async def test_another_accounts_key_is_bad_csr(harness: Harness) -> None:
    other_key = Key()
    await harness.account(other_key)
    c = await harness.account()
    order = await harness.ready_order(c, "acctkey2.test")
    der, _ = csr_der(["acctkey2.test"], other_key.priv)
    fin = await c.post(order.json["finalize"], {"csr": b64u(der)})
    assert_problem(fin, 400, "badCSR", "account key")


async def test_reused_certificate_key_is_bad_csr(harness: Harness) -> None:
    c = await harness.account()
    _, _, cert_key = await harness.issue(c, "first.test")
    order = await harness.ready_order(c, "second.test")
    der, _ = csr_der(["second.test"], cert_key)
    fin = await c.post(order.json["finalize"], {"csr": b64u(der)})
    assert_problem(fin, 400, "badCSR", "certified before")


@pytest.mark.parametrize("csr", ["!!not base64!!", "AAAA=", "a+b/", 42, None])
async def test_bad_csr_encoding_is_malformed(harness: Harness, csr: Any) -> None:
    c = await harness.account()
    order = await harness.ready_order(c, "b64.test")
    fin = await c.post(order.json["finalize"], {"csr": csr} if csr is not None else {})
    assert_problem(fin, 400, "malformed", "csr")
    assert (await c.post(order.location)).json["status"] == "ready"


async def test_csr_not_der_is_bad_csr(harness: Harness) -> None:
    c = await harness.account()
    order = await harness.ready_order(c, "notder.test")
    fin = await c.post(order.json["finalize"], {"csr": b64u(b"not a csr")})
    assert_problem(fin, 400, "badCSR", "not a DER PKCS#10")


async def test_csr_with_email_san_is_bad_csr(harness: Harness) -> None:
    c = await harness.account()
    order = await harness.ready_order(c, "email.test")
    key = ec.generate_private_key(ec.SECP256R1())
    der = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "email.test")]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("email.test"),
                                                       x509.RFC822Name("a@email.test")]), False)
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    fin = await c.post(order.json["finalize"], {"csr": b64u(der)})
    assert_problem(fin, 400, "badCSR", "RFC822Name")


@pytest.mark.parametrize("make_key", [
    lambda: ed25519.Ed25519PrivateKey.generate(),
    lambda: ec.generate_private_key(ec.SECP384R1()),
    lambda: rsa.generate_private_key(65537, 2048),
], ids=["ed25519", "p384", "rsa2048"])
async def test_key_types_issue(harness: Harness, make_key: Any) -> None:
    c = await harness.account()
    key = make_key()
    _, chain, _ = await harness.issue(c, "keys.test", key=key)
    leaf = x509.load_pem_x509_certificate(chain)
    assert leaf.public_key() == key.public_key()
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature
    assert ku.key_encipherment == isinstance(key, rsa.RSAPrivateKey)


async def test_other_accounts_order_cannot_be_finalized(harness: Harness) -> None:
    c = await harness.account()
    order = await harness.ready_order(c, "theirs.test")
    mallory = await harness.account()
    der, _ = csr_der(["theirs.test"])
    fin = await mallory.post(order.json["finalize"], {"csr": b64u(der)})
    assert_problem(fin, 404, "malformed", "no such order")
    assert (await c.post(order.location)).json["status"] == "ready"


async def test_order_whose_not_after_passed_cannot_be_finalized(harness: Harness) -> None:
    c = await harness.account()
    na = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    order = await harness.ready_order(c, "late.test", notAfter=na.strftime("%Y-%m-%dT%H:%M:%SZ"))
    later = na + timedelta(hours=1)
    harness.ctx.orders.d.now = lambda: later
    der, _ = csr_der(["late.test"])
    fin = await c.post(order.json["finalize"], {"csr": b64u(der)})
    assert_problem(fin, 400, "malformed", "notAfter", "has passed")
    o = (await c.post(order.location)).json
    assert o["status"] == "invalid" and "notAfter" in o["error"]["detail"]


async def test_profile_outliving_the_ca_ends_with_the_intermediate(
        make_harness: MakeHarness) -> None:
    # A profile lifetime past the intermediate's expiry made the CA raise CAError (a 500).
    h = await make_harness(profiles={"decade": {"description": "10 years", "lifetime": "3700d"}})
    c = await h.account()
    _, chain, _ = await h.issue(c, "decade.test", profile="decade")
    leaf = x509.load_pem_x509_certificate(chain)
    assert leaf.not_valid_after_utc == h.ctx.issuance.d.ca.intermediate_cert.not_valid_after_utc


async def test_ca_refusal_is_a_problem_and_the_order_is_not_left_processing(
        make_harness: MakeHarness) -> None:
    # Orders and authorizations that outlive the intermediate let the clock pass its expiry.
    h = await make_harness(acme={"order_ttl": "2000d", "authz_ttl": "2000d"})
    c = await h.account()
    order = await h.ready_order(c, "refused.test")
    end = h.ctx.issuance.d.ca.intermediate_cert.not_valid_after_utc
    h.ctx.orders.d.now = lambda: end + timedelta(hours=1)
    der, _ = csr_der(["refused.test"])
    fin = await c.post(order.json["finalize"], {"csr": b64u(der)})
    assert_problem(fin, 500, "serverInternal", "CA refused")
    o = (await c.post(order.location)).json
    assert o["status"] == "invalid"
    assert "CA refused" in o["error"]["detail"]
    assert h.ctx.store.orders_processing() == []
