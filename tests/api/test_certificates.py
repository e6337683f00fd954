"""Certificate download (RFC 8555 §7.4.2), certificate contents and the CRL."""
from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from support.harness import Harness, assert_problem
from support.acmeclient import b64u, jws

PEM_CHAIN = "application/pem-certificate-chain"


async def test_download_headers_and_chain(harness: Harness) -> None:
    c = await harness.account()
    fin, _, _ = await harness.issue(c, "dl.test")
    r = await c.post(fin.json["certificate"])
    assert r.status == 200
    assert r.headers["Content-Type"] == PEM_CHAIN
    assert '<http://test.invalid/acme/root>;rel="up"' in r.headers.getall("Link")
    certs = x509.load_pem_x509_certificates(r.body)
    ca = harness.ctx.issuance.d.ca
    assert len(certs) == 2 and certs[1] == ca.intermediate_cert
    root = x509.load_pem_x509_certificate(ca.root_pem)
    store = Store([root])
    PolicyBuilder().store(store).build_server_verifier(x509.DNSName("dl.test")).verify(
        certs[0], certs[1:])
    PolicyBuilder().store(store).build_client_verifier().verify(certs[0], certs[1:])
    # the "up" link serves the root the chain verifies against
    up = await harness.http.get("/acme/root")
    assert up.status == 200
    assert x509.load_pem_x509_certificate(await up.read()) == root


async def test_download_needs_post_as_get_and_pem_accept(harness: Harness) -> None:
    c = await harness.account()
    fin, _, _ = await harness.issue(c, "accept.test")
    url = fin.json["certificate"]
    assert_problem(await c.post(url, {}), 400, "malformed", "POST-as-GET")
    # Accept: application/json is refused with 406; */* is fine
    for accept, status in (("application/json", 406), ("*/*", 200), (PEM_CHAIN, 200)):
        body = jws(c.key, url, None, nonce=await c.fresh_nonce(), kid=c.kid)
        resp = await harness.http.post(c.path(url), json=body, headers={
            "Content-Type": "application/jose+json", "Accept": accept})
        assert resp.status == status, (accept, await resp.text())


async def test_other_account_cannot_download(harness: Harness) -> None:
    c = await harness.account()
    fin, _, _ = await harness.issue(c, "mine.test")
    mallory = await harness.account()
    r = await mallory.post(fin.json["certificate"])
    assert_problem(r, 404, "malformed", "no such certificate")
    assert b"BEGIN CERTIFICATE" not in r.body


async def test_unknown_certificate(harness: Harness) -> None:
    c = await harness.account()
    r = await c.post("http://test.invalid/acme/cert/abcdef")
    assert_problem(r, 404, "malformed", "no such certificate")


async def test_certificate_contents(harness: Harness) -> None:
    c = await harness.account()
    _, chain, _ = await harness.issue(c, "b.test", "a.test")
    leaf = x509.load_pem_x509_certificate(chain)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sorted(san.value.get_values_for_type(x509.DNSName)) == ["a.test", "b.test"]
    assert san.critical and len(leaf.subject) == 0
    cdp = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    urls = [n.value for dp in cdp for n in (dp.full_name or [])]
    assert urls == ["http://test.invalid/crl/intermediate.crl"]
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = harness.ctx.issuance.d.ca.intermediate_cert.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


async def _crl(harness: Harness) -> x509.CertificateRevocationList:
    r = await harness.http.get("/crl/intermediate.crl")
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/pkix-crl"
    crl = x509.load_der_x509_crl(await r.read())
    inter = harness.ctx.issuance.d.ca.intermediate_cert
    assert crl.issuer == inter.subject
    assert crl.is_signature_valid(inter.public_key())
    return crl


async def test_crl_lists_revoked_serials(harness: Harness) -> None:
    c = await harness.account()
    _, chain1, _ = await harness.issue(c, "crl1.test")
    _, chain2, _ = await harness.issue(c, "crl2.test")
    leaf1 = x509.load_pem_x509_certificate(chain1)
    leaf2 = x509.load_pem_x509_certificate(chain2)
    before = await _crl(harness)
    assert len(before) == 0
    der1 = leaf1.public_bytes(serialization.Encoding.DER)
    r = await c.post(c.url("revokeCert"), {"certificate": b64u(der1), "reason": 1})
    assert r.status == 200, r.body
    after = await _crl(harness)
    entry = after.get_revoked_certificate_by_serial_number(leaf1.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == \
        x509.ReasonFlags.key_compromise
    assert after.get_revoked_certificate_by_serial_number(leaf2.serial_number) is None
    assert len(after) == 1
