"""The audit log through the API: each security-relevant change leaves one hash-chained
event, written in the change's own transaction, naming who acted; the chain verifies."""
from __future__ import annotations

import json
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from server import ops
from server.models import EabKey
from server.store import audit
from server.store.audit import AuditRecord, row_hash
from server.store.repo import Store
from server.va.attest.chains import TrustLoadError
from support.acmeclient import b64u
from support.harness import Harness, MakeHarness
from test_device_attest import DEVICE, Factory, _attest, _enroll
from test_device_attest import dev, factory  # noqa: F401  (fixtures)

NOW = datetime.now(timezone.utc)


def events(h: Harness, **filters: Any) -> list[AuditRecord]:
    return audit.entries(h.ctx.store, **filters)


def account_id(kid: str | None) -> str:
    assert kid is not None
    return kid.rsplit("/", 1)[-1]


def serial_of(chain: bytes) -> str:
    return format(x509.load_pem_x509_certificate(chain).serial_number, "x")


def assert_intact(h: Harness) -> None:
    rows, _, problems = audit.verify_store(h.ctx.store)
    assert rows > 0 and problems == [], problems


async def test_enrollment_and_revocation_in_order(harness: Harness) -> None:
    c = await harness.account(contact=["mailto:ops@example.test"])
    acct = account_id(c.kid)
    fin, chain, _ = await harness.issue(c, "audit.test")
    der = x509.load_pem_x509_certificate(chain).public_bytes(serialization.Encoding.DER)
    r = await c.post(c.url("revokeCert"), {"certificate": b64u(der), "reason": 1})
    assert r.status == 200, r.body
    log = events(harness)
    assert [e.event for e in log] == ["account.created", "order.created", "challenge.valid",
                                      "certificate.issued", "certificate.revoked"]
    assert {e.actor for e in log} == {f"acme:{acct}"}
    assert [e.seq for e in log] == list(range(1, 6))
    created, order, chall, issued, revoked = log
    assert created.subject == acct and created.detail_obj["contact"] == ["mailto:ops@example.test"]
    assert order.detail_obj["identifiers"] == ["dns:audit.test"]
    assert (chall.detail_obj["type"], chall.detail_obj["identifier"]) == ("http-01",
                                                                          "dns:audit.test")
    assert issued.subject == revoked.subject == serial_of(chain)
    assert revoked.detail_obj == {"code": 1, "reason": "keyCompromise", "via": "acme"}
    assert_intact(harness)


async def test_failed_challenge_records_the_reason(harness: Harness) -> None:
    c = await harness.account()
    order = await c.new_order("nobody-home.test")
    authz = (await c.post(order.json["authorizations"][0])).json
    ch = next(x for x in authz["challenges"] if x["type"] == "http-01")
    await c.post(ch["url"], {})  # the responder has no token: validation fails
    await harness.ctx.orders.drain()
    (failed,) = events(harness, event="challenge")
    assert failed.event == "challenge.invalid" and failed.subject == ch["url"].rsplit("/", 1)[-1]
    assert failed.actor == f"acme:{account_id(c.kid)}"
    assert failed.detail_obj["problem"] == "unauthorized"
    assert "404" in failed.detail_obj["error"]  # the validator's own words
    assert_intact(harness)


async def test_revoking_twice_records_once(harness: Harness) -> None:
    c = await harness.account()
    _, chain, _ = await harness.issue(c, "twice.test")
    store = harness.ctx.store
    assert store.revoke_certificate(serial_of(chain), reason=4, when=NOW, actor="cli:op", via="cli")
    assert not store.revoke_certificate(serial_of(chain), reason=4, when=NOW, actor="cli:op")
    assert [e.actor for e in events(harness, event="certificate.revoked")] == ["cli:op"]


async def test_no_event_without_its_change(harness: Harness) -> None:
    """A change that rolls back takes its event with it, and the chain stays whole."""
    store = harness.ctx.store
    c = await harness.account()
    before = len(events(harness))
    dup = store.get_account(account_id(c.kid))
    assert dup is not None
    assert not store.insert_account(dup)  # same key: IntegrityError inside the transaction
    assert not store.revoke_eab_key("no-such-kid")
    assert not store.allow_bootstrap("never-denied")
    assert len(events(harness)) == before
    assert_intact(harness)


async def test_device_lifecycle_names_node_and_operator(dev: Harness, factory: Factory) -> None:
    cert, key = factory.device()
    leaf = await _enroll(dev, await dev.account(), cert, key)
    store = dev.ctx.store
    ops.set_labels(store, DEVICE, ["site=lyon"], now=NOW, actor="cli:alice")
    ops.decommission(store, DEVICE, now=NOW, actor="cli:alice")
    ops.readmit(store, DEVICE, now=NOW, actor="admin:bob")
    ops.bootstrap_deny(store, DEVICE, serial=False, note="stolen", now=NOW, actor="cli:alice")
    ops.bootstrap_allow(store, DEVICE, serial=False, now=NOW, actor="cli:alice")
    node_log = events(dev, node="sn-0042")
    assert [e.event for e in node_log] == [
        "challenge.valid", "certificate.issued", "node.labels_set", "certificate.revoked",
        "node.decommissioned", "node.readmitted", "bootstrap.denied", "bootstrap.allowed"]
    revoked = node_log[3]
    assert revoked.subject == format(leaf.serial_number, "x") and revoked.actor == "cli:alice"
    assert revoked.detail_obj["via"] == "decommission"
    assert node_log[5].actor == "admin:bob"
    assert node_log[0].detail_obj["device"] == DEVICE
    assert [e.event for e in events(dev, event="node")] == [
        "node.labels_set", "node.decommissioned", "node.readmitted"]
    assert_intact(dev)


async def test_rejoin_supersede_is_a_server_revocation(dev: Harness, factory: Factory) -> None:
    cert, key = factory.device()
    first = await _enroll(dev, await dev.account(), cert, key)
    await _enroll(dev, await dev.account(), cert, key)
    (revoked,) = events(dev, event="certificate.revoked")
    assert revoked.subject == format(first.serial_number, "x")
    assert (revoked.actor, revoked.node, revoked.detail_obj["via"]) == ("server", "sn-0042",
                                                                         "rejoin")


async def test_approved_rejoin(make_harness: MakeHarness, factory: Factory) -> None:
    h = await make_harness(attestation={"roots_dir": str(factory.roots), "rejoin": "approve"})
    cert, key = factory.device()
    await _enroll(h, await h.account(), cert, key)
    c2 = await h.account()
    await _attest(c2, {"type": "permanent-identifier", "value": DEVICE}, cert, key)
    assert ops.approve(h.ctx.store, DEVICE, now=NOW, actor="cli:carol")["approved"] == 1
    held, approved = events(h, event="challenge")[-1], events(h, event="node.rejoin_approved")[0]
    assert held.event == "challenge.awaiting_approval"
    assert held.actor == f"acme:{account_id(c2.kid)}"
    assert approved.actor == "cli:carol" and approved.detail_obj["account"] == account_id(c2.kid)


async def test_policy_reload_and_admin_login(dev: Harness, factory: Factory) -> None:
    dev.ctx.orders.devices.reload_trust()  # what SIGHUP does: queued on the writer
    store = dev.ctx.store
    await store.write(store.audit, "admin.login", "admin:alice", "alice", {"from": "127.0.0.1"})
    reload, login = events(dev)[-2:]
    assert reload.event == "policy.reloaded" and reload.actor == "server"
    assert reload.detail_obj["manufacturers"] == ["acme-devices"]
    assert (login.event, login.actor, login.detail_obj) == ("admin.login", "admin:alice",
                                                            {"from": "127.0.0.1"})
    (factory.roots / "broken.pem").write_text("not a certificate")
    with pytest.raises(TrustLoadError):
        dev.ctx.orders.devices.reload_trust()
    await store.write(store.audit, "probe", "server")  # behind the queued event
    assert events(dev)[-2].event == "policy.reload_failed"
    assert "broken.pem" in events(dev)[-2].detail_obj["error"]


async def test_eab_keys_never_log_the_secret(harness: Harness) -> None:
    store = harness.ctx.store
    ops.eab_create(store, "for the lab", now=NOW, actor="cli:dave")
    kid = events(harness)[-1].subject
    ops.eab_revoke(store, kid, now=NOW, actor="cli:dave")
    created, revoked = events(harness, event="eab")
    assert (created.event, revoked.event) == ("eab.created", "eab.revoked")
    assert created.detail_obj == {"note": "for the lab"}
    assert "hmac" not in created.detail.lower()


async def test_another_process_writes_into_the_same_chain(harness: Harness) -> None:
    """The CLI opens its own Store on the same file: both chain onto the one head."""
    cli = Store(harness.ctx.cfg.db_path)
    try:
        for i in range(3):
            c = await harness.account()
            cli.insert_eab_key(EabKey(kid=f"cli-{i}", hmac_key=b"k", created_at=NOW),
                               actor="cli:op")
            assert c.kid
        rows, _, problems = audit.verify_store(cli)
    finally:
        cli.close()
    assert rows == 6 and problems == []
    assert [e.event for e in events(harness)] == ["account.created", "eab.created"] * 3


async def test_mirror_file(make_harness: MakeHarness, tmp_path: Path) -> None:
    mirror = tmp_path / "audit.jsonl"
    h = await make_harness(audit={"mirror_file": str(mirror)})
    c = await h.account()
    await h.issue(c, "mirror.test")
    lines = [json.loads(line) for line in mirror.read_text().splitlines()]
    assert [(x["seq"], x["hash"]) for x in lines] == [(e.seq, e.hash) for e in events(h)]
    assert os.stat(mirror).st_mode & 0o777 == 0o600
    out = ops.audit_verify(h.ctx.store)
    assert out["ok"] and out["mirror"] == str(mirror)
    # Rewrite the whole chain from row 2 with fresh hashes: only the mirror can tell.
    conn = sqlite3.connect(h.ctx.cfg.db_path)
    prev = conn.execute("SELECT hash FROM audit_log WHERE seq = 1").fetchone()[0]
    for seq, at, ev, actor, subj, node, detail in conn.execute(
            "SELECT seq, at, event, actor, subject, node, detail FROM audit_log WHERE seq > 1 "
            "ORDER BY seq").fetchall():
        detail = detail.replace("mirror.test", "other.test")
        new = row_hash(seq, at, ev, actor, subj, node, detail, prev)
        conn.execute("UPDATE audit_log SET detail = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                     (detail, prev, new, seq))
        prev = new
    conn.commit()
    conn.close()
    assert audit.verify_store(h.ctx.store)[2] == []  # self-consistent again
    out = ops.audit_verify(h.ctx.store)
    assert not out["ok"] and out["problems"][0]["seq"] == 2
    assert "mirror" in out["problems"][0]["message"]
