"""The happy path through every resource, checking the headers clients rely on."""
from __future__ import annotations

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from support.harness import Harness


async def test_full_enrollment_headers_and_chain(harness: Harness) -> None:
    c = await harness.client()
    r = await c.new_account(contact=["mailto:ops@example.test"])
    assert r.status == 201
    assert r.location.startswith("http://test.invalid/acme/acct/")
    assert r.headers["Replay-Nonce"]
    assert 'rel="index"' in r.headers["Link"]
    assert r.json["status"] == "valid" and r.json["orders"].endswith("/orders")

    order = await c.new_order("node1.test")
    assert order.status == 201 and order.location.startswith("http://test.invalid/acme/order/")
    assert order.json["status"] == "pending" and order.json["profile"] == "default"
    authz = await c.post(order.json["authorizations"][0])
    assert authz.status == 200 and authz.headers["Retry-After"] == "1"
    assert {ch["type"] for ch in authz.json["challenges"]} == {"http-01", "tls-alpn-01"}

    fin, chain, _ = await harness.issue(c, "node1.test")
    assert fin.headers["Location"].startswith("http://test.invalid/acme/order/")
    pem = await c.post(fin.json["certificate"])
    assert pem.headers["Content-Type"] == "application/pem-certificate-chain"
    assert 'rel="up"' in pem.headers.getall("Link")[0] + pem.headers.getall("Link")[-1]

    certs = x509.load_pem_x509_certificates(chain)
    root = x509.load_pem_x509_certificate(harness.ctx.issuance.d.ca.root_pem)
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(
        x509.DNSName("node1.test"))
    verifier.verify(certs[0], certs[1:])
    san = certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node1.test"]


async def test_valid_authorization_is_reused(harness: Harness) -> None:
    c = await harness.account()
    await harness.ready_order(c, "reuse.test")
    again = await c.new_order("reuse.test")
    assert again.json["status"] == "ready"
