"""ACME Renewal Information (RFC 9773): certificate ids, windows, and `replaces`."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from support.harness import Harness, assert_problem
from server.ra import ari
from support.acmeclient import AcmeTestClient, b64u


def _our_cert_id(leaf: x509.Certificate) -> str:
    """RFC 9773 §4.1 computed independently of server.ra.ari."""
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    # DER INTEGER: tag 0x02, one length octet for serials this size, then the content octets
    serial_der = leaf.public_bytes(serialization.Encoding.DER)
    n = leaf.serial_number
    content = n.to_bytes((n.bit_length() + 8) // 8, "big")  # room for a sign bit
    if len(content) > 1 and content[0] == 0 and not content[1] & 0x80:
        content = content[1:]
    assert bytes([0x02, len(content)]) + content in serial_der  # really the encoded octets
    return f"{b64u(aki.key_identifier)}.{b64u(content)}"


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


async def _issued(harness: Harness,
                  name: str = "ari.test") -> tuple[AcmeTestClient, x509.Certificate, str]:
    c = await harness.account()
    _, chain, _ = await harness.issue(c, name)
    leaf = x509.load_pem_x509_certificate(chain)
    return c, leaf, _our_cert_id(leaf)


async def test_directory_has_renewal_info(harness: Harness) -> None:
    c = await harness.client()
    assert c.directory["renewalInfo"] == "http://test.invalid/acme/renewal-info"


async def test_cert_id_matches_the_server(harness: Harness) -> None:
    _, leaf, cid = await _issued(harness)
    assert ari.cert_id(leaf) == cid
    assert ari.parse_cert_id(cid) == (
        leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier,
        leaf.serial_number)


@pytest.mark.parametrize("serial,octets", [
    (1, b"\x01"), (0x7F, b"\x7f"), (0x80, b"\x00\x80"), (0xFF, b"\x00\xff"),
    (0x0100, b"\x01\x00"), (0x8000, b"\x00\x80\x00"), (0x7FFF, b"\x7f\xff"),
])
def test_serial_content_octets(serial: int, octets: bytes) -> None:
    assert ari.serial_content_octets(serial) == octets


async def test_renewal_info_for_issued_certificate(harness: Harness) -> None:
    _, leaf, cid = await _issued(harness)
    r = await harness.http.get(f"/acme/renewal-info/{cid}")
    assert r.status == 200
    assert int(r.headers["Retry-After"]) > 0
    window = (await r.json())["suggestedWindow"]
    start, end = _parse(window["start"]), _parse(window["end"])
    assert leaf.not_valid_before_utc < start < end < leaf.not_valid_after_utc


async def test_renewal_info_after_revocation_is_in_the_past(harness: Harness) -> None:
    c, leaf, cid = await _issued(harness, "ari-rev.test")
    der = leaf.public_bytes(serialization.Encoding.DER)
    r = await c.post(c.url("revokeCert"), {"certificate": b64u(der), "reason": 1})
    assert r.status == 200
    info = await harness.http.get(f"/acme/renewal-info/{cid}")
    assert info.status == 200
    window = (await info.json())["suggestedWindow"]
    now = datetime.now(UTC)
    assert _parse(window["start"]) < _parse(window["end"]) <= now


@pytest.mark.parametrize("bad", ["nodot", "abc.", ".abc", "a=.b", "AAAA.gA"])
async def test_bad_cert_id_is_malformed(harness: Harness, bad: str) -> None:
    r = await harness.http.get(f"/acme/renewal-info/{bad}")
    assert r.status == 400
    body = await r.json()
    assert body["type"] == "urn:ietf:params:acme:error:malformed"
    assert "ARI" in body["detail"]


async def test_unknown_cert_id_is_not_found(harness: Harness) -> None:
    unknown = b64u(b"x" * 20) + "." + b64u(b"\x01\x02")
    r = await harness.http.get(f"/acme/renewal-info/{unknown}")
    assert r.status == 404
    body = await r.json()
    assert body["type"] == "urn:ietf:params:acme:error:malformed"
    assert "no certificate" in body["detail"]


async def test_replaces_is_shown_and_cannot_be_used_twice(harness: Harness) -> None:
    c, _, cid = await _issued(harness, "renew.test")
    first = await c.new_order("renew.test", replaces=cid)
    assert first.status == 201, first.body
    assert first.json["replaces"] == cid
    assert (await c.post(first.location)).json["replaces"] == cid
    second = await c.new_order("renew.test", replaces=cid)
    assert_problem(second, 409, "alreadyReplaced", cid)


async def test_replacing_order_that_failed_frees_the_certificate(harness: Harness) -> None:
    c, _, cid = await _issued(harness, "refail.test")
    first = await c.new_order("refail.test", replaces=cid)
    assert first.status == 201
    # a fresh authorization is needed (reuse would make the order ready): deactivate it
    for url in first.json["authorizations"]:
        await c.post(url, {"status": "deactivated"})
    assert (await c.post(first.location)).json["status"] == "invalid"
    again = await c.new_order("refail.test", replaces=cid)
    assert again.status == 201, again.body


@pytest.mark.parametrize("replaces,fragment", [
    ("nodot", "not an ARI certificate id"),
    (7, "replaces must be"),
])
async def test_replaces_malformed(harness: Harness, replaces: object, fragment: str) -> None:
    c = await harness.account()
    r = await c.new_order("x.test", replaces=replaces)
    assert_problem(r, 400, "malformed", fragment)


async def test_replaces_unknown_certificate_is_malformed(harness: Harness) -> None:
    c = await harness.account()
    unknown = b64u(b"k" * 20) + "." + b64u(b"\x05")
    r = await c.new_order("x.test", replaces=unknown)
    assert_problem(r, 400, "malformed", "unknown certificate")


async def test_replaces_other_accounts_certificate_without_shared_names(harness: Harness) -> None:
    _, _, cid = await _issued(harness, "owned.test")
    mallory = await harness.account()
    r = await mallory.new_order("elsewhere.test", replaces=cid)
    assert_problem(r, 403, "unauthorized", "another account")
    # with a name in common the renewal may move accounts (RFC 9773 §5)
    ok = await mallory.new_order("owned.test", replaces=cid)
    assert ok.status == 201, ok.body
    assert ok.json["replaces"] == cid
