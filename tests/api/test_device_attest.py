"""device-attest-01 through the API: a bootstrap certificate buys an operational
certificate whose identity comes from the templates, and every refusal names its check."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from support.harness import Harness, MakeHarness, assert_problem
from nodetrust.attestation import build_att_obj
from server import permanent_identifier
from server.demo import issue_bootstrap, make_manufacturer_root
from support.acmeclient import AcmeTestClient, b64u, csr_der

NOW = datetime.now(timezone.utc)
DEVICE = "SN-0042"
NODE_DNS = "sn-0042.nodes.nodetrust.internal"
SPIFFE = "spiffe://nodetrust.internal/node/sn-0042"


def der(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.DER)


class Factory:
    """A manufacturer whose root sits in the server's roots folder."""

    def __init__(self, roots: Path) -> None:
        self.roots = roots
        self.root, self.key = make_manufacturer_root("Acme Devices")
        roots.mkdir(parents=True, exist_ok=True)
        (roots / "acme-devices.pem").write_bytes(self.root.public_bytes(serialization.Encoding.PEM))

    def device(self, device_id: str = DEVICE, **kw: Any) -> tuple[x509.Certificate, Any]:
        return issue_bootstrap(device_id, self.root, self.key, **kw)


@pytest.fixture
def factory(tmp_path: Path) -> Factory:
    return Factory(tmp_path / "roots")


@pytest.fixture
async def dev(make_harness: MakeHarness, factory: Factory) -> Harness:
    return await make_harness(attestation={"roots_dir": str(factory.roots)})


async def _attest(c: AcmeTestClient, ident: dict[str, str], cert: x509.Certificate, key: Any,
                  *, key_authz: str | None = None, fmt: str = "step",
                  att_obj: str | None = None) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    order = await c.post(c.url("newOrder"), {"identifiers": [ident]})
    assert order.status == 201, order.body
    authz = (await c.post(order.json["authorizations"][0])).json
    assert [ch["type"] for ch in authz["challenges"]] == ["device-attest-01"]
    ch = authz["challenges"][0]
    ka = key_authz or f"{ch['token']}.{c.key.thumbprint}"
    r = await c.post(ch["url"], {"attObj": att_obj or build_att_obj(ka, key, [der(cert)], fmt=fmt)})
    return order.json | {"url": order.location}, r, ch


async def _enroll(harness: Harness, c: AcmeTestClient, cert: x509.Certificate, key: Any,
                  ident: dict[str, str] | None = None) -> x509.Certificate:
    order, r, _ = await _attest(c, ident or {"type": "permanent-identifier", "value": DEVICE},
                                cert, key)
    assert r.status == 200 and r.json["status"] == "valid", r.body
    csr, _ = csr_der([])
    fin = await c.post(order["finalize"], {"csr": b64u(csr)})
    assert fin.status == 200 and fin.json["status"] == "valid", fin.body
    chain = x509.load_pem_x509_certificates((await c.post(fin.json["certificate"])).body)
    return chain[0]


async def test_permanent_identifier_enrollment_issues_template_identity(dev: Harness,
                                                                        factory: Factory) -> None:
    c = await dev.account()
    cert, key = factory.device()
    leaf = await _enroll(dev, c, cert, key)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [NODE_DNS]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]
    others = san.get_values_for_type(x509.OtherName)
    assert [permanent_identifier.decode(o.value)[0] for o in others] == [DEVICE]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= timedelta(hours=24)
    node = dev.ctx.store.get_node(DEVICE)
    assert node is not None and node.status == "active"
    assert node.current_serial == format(leaf.serial_number, "x")


async def test_dns_identifier_of_the_node_works_like_certbot_would_ask(dev: Harness,
                                                                       factory: Factory) -> None:
    c = await dev.account()
    cert, key = factory.device(id_in="permanentIdentifier")
    leaf = await _enroll(dev, c, cert, key, {"type": "dns", "value": NODE_DNS})
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]


async def test_privacy_mode_keeps_the_serial_out(make_harness: MakeHarness, factory: Factory) -> None:
    h = await make_harness(attestation={"roots_dir": str(factory.roots)},
                           identity={"include_permanent_identifier": False})
    cert, key = factory.device()
    leaf = await _enroll(h, await h.account(), cert, key)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.OtherName) == []


def _crl_with(factory: Factory, cert: x509.Certificate, path: Path) -> Path:
    crl = (x509.CertificateRevocationListBuilder().issuer_name(factory.root.subject)
           .last_update(NOW - timedelta(hours=1)).next_update(NOW + timedelta(days=7))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                                    .revocation_date(NOW - timedelta(hours=1)).build())
           .sign(factory.key, hashes.SHA256()))
    path.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    return path


async def _refused(h: Harness, c: AcmeTestClient, cert: x509.Certificate, key: Any, check: str,
                   **kw: Any) -> str:
    ident = kw.pop("ident", {"type": "permanent-identifier", "value": DEVICE})
    order, r, ch = await _attest(c, ident, cert, key, **kw)
    assert r.status == 200 and r.json["status"] == "invalid", r.body
    err = r.json["error"]
    assert err["type"] == "urn:ietf:params:acme:error:badAttestationStatement"
    assert err["detail"].startswith(check), err["detail"]
    assert (await c.post(order["url"])).json["status"] == "invalid"
    return str(err["detail"])


async def test_every_failure_names_its_check(dev: Harness, factory: Factory, tmp_path: Path) -> None:
    c = await dev.account()
    cert, key = factory.device()
    await _refused(dev, c, cert, key, "malformed CBOR", att_obj="bm90LWNib3I")
    await _refused(dev, c, cert, key, "unknown format", fmt="tpm")
    await _refused(dev, c, cert, key, "signature mismatch", key_authz="other.token")
    stranger = make_manufacturer_root("Unknown Vendor")
    s_cert, s_key = issue_bootstrap(DEVICE, *stranger)
    await _refused(dev, c, s_cert, s_key, "untrusted chain")
    old, old_key = factory.device(not_before=NOW - timedelta(days=9), not_after=NOW - timedelta(days=1))
    await _refused(dev, c, old, old_key, "bootstrap certificate expired")
    soon, soon_key = factory.device(not_before=NOW + timedelta(days=1), not_after=NOW + timedelta(days=9))
    await _refused(dev, c, soon, soon_key, "bootstrap certificate not yet valid")
    other, other_key = factory.device("SN-OTHER")
    detail = await _refused(dev, c, other, other_key, "identifier mismatch")
    assert "SN-OTHER" in detail


async def test_revoked_bootstrap_by_crl_and_by_deny_list(make_harness: MakeHarness,
                                                        factory: Factory, tmp_path: Path) -> None:
    cert, key = factory.device()
    crl = _crl_with(factory, cert, tmp_path / "acme.crl")
    h = await make_harness(attestation={"roots_dir": str(factory.roots), "crls": [str(crl)]})
    await _refused(h, await h.account(), cert, key, "bootstrap certificate revoked")

    h2 = await make_harness(attestation={"roots_dir": str(factory.roots)})
    fresh, fresh_key = factory.device("SN-DENIED")
    assert h2.ctx.store.deny_bootstrap("SN-DENIED", "device", "stolen", NOW)
    detail = await _refused(h2, await h2.account(), fresh, fresh_key, "bootstrap certificate revoked",
                            ident={"type": "permanent-identifier", "value": "SN-DENIED"})
    assert "deny list" in detail


async def test_token_cannot_be_used_twice(dev: Harness, factory: Factory) -> None:
    c = await dev.account()
    cert, key = factory.device()
    _, r, ch = await _attest(c, {"type": "permanent-identifier", "value": DEVICE}, cert, key)
    assert r.json["status"] == "valid"
    again = await c.post(ch["url"], {"attObj": build_att_obj(f"{ch['token']}.{c.key.thumbprint}",
                                                             key, [der(cert)])})
    assert_problem(again, 400, "badAttestationStatement", "token already used")


async def test_operational_key_must_not_be_the_bootstrap_key(dev: Harness, factory: Factory) -> None:
    c = await dev.account()
    cert, key = factory.device()
    order, r, _ = await _attest(c, {"type": "permanent-identifier", "value": DEVICE}, cert, key)
    csr, _ = csr_der([NODE_DNS], key)
    assert_problem(await c.post(order["finalize"], {"csr": b64u(csr)}), 400, "badCSR",
                   "bootstrap key")
    csr2, _ = csr_der(["other.test"])
    assert_problem(await c.post(order["finalize"], {"csr": b64u(csr2)}), 400, "badCSR",
                   "other.test")


async def test_decommissioned_device_cannot_enroll(dev: Harness, factory: Factory) -> None:
    cert, key = factory.device()
    await _enroll(dev, await dev.account(), cert, key)
    assert dev.ctx.store.set_node_status(DEVICE, "decommissioned", NOW)
    await _refused(dev, await dev.account(), cert, key, "device decommissioned")


async def test_rejoin_allow_supersedes_the_old_certificate(dev: Harness, factory: Factory) -> None:
    cert, key = factory.device()
    first = await _enroll(dev, await dev.account(), cert, key)
    second = await _enroll(dev, await dev.account(), cert, key)  # new account: lost its key
    old = dev.ctx.store.get_certificate(format(first.serial_number, "x"))
    assert old is not None and old.status == "revoked" and old.revocation_reason == 4
    new = dev.ctx.store.get_certificate(format(second.serial_number, "x"))
    assert new is not None and new.status == "valid"


async def test_rejoin_deny(make_harness: MakeHarness, factory: Factory) -> None:
    h = await make_harness(attestation={"roots_dir": str(factory.roots), "rejoin": "deny"})
    cert, key = factory.device()
    await _enroll(h, await h.account(), cert, key)
    detail = await _refused(h, await h.account(), cert, key, "rejoin refused")
    assert "attestation.rejoin = deny" in detail


async def test_rejoin_approve_waits_for_the_operator(make_harness: MakeHarness,
                                                     factory: Factory) -> None:
    h = await make_harness(attestation={"roots_dir": str(factory.roots), "rejoin": "approve"})
    cert, key = factory.device()
    await _enroll(h, await h.account(), cert, key)
    c2 = await h.account()
    order, r, ch = await _attest(c2, {"type": "permanent-identifier", "value": DEVICE}, cert, key)
    assert r.json["status"] == "processing"
    assert (await c2.post(order["url"])).json["status"] == "pending"
    assert h.ctx.store.approve_rejoin(DEVICE, NOW) == 1
    assert (await c2.post(order["url"])).json["status"] == "ready"


async def test_a_new_manufacturer_root_is_trusted_after_reload(dev: Harness, factory: Factory) -> None:
    second = make_manufacturer_root("Second Factory")
    cert, key = issue_bootstrap("SF-1", *second)
    c = await dev.account()
    await _refused(dev, c, cert, key, "untrusted chain",
                   ident={"type": "permanent-identifier", "value": "SF-1"})
    (factory.roots / "second-factory.pem").write_bytes(second[0].public_bytes(serialization.Encoding.PEM))
    dev.ctx.orders.devices.reload_trust()  # what SIGHUP does
    leaf = await _enroll(dev, c, cert, key, {"type": "permanent-identifier", "value": "SF-1"})
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName) == ["sf-1.nodes.nodetrust.internal"]


async def test_device_names_need_attestation(dev: Harness) -> None:
    c = await dev.account()
    order = await c.new_order(NODE_DNS)
    authz = (await c.post(order.json["authorizations"][0])).json
    assert [ch["type"] for ch in authz["challenges"]] == ["device-attest-01"]
