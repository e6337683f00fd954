"""The gateways' revocation feed (GET /feed/revocations) and the CRL that follows it."""
from __future__ import annotations

import asyncio
import base64
import stat
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from api.conftest import Harness, MakeHarness  # annotations only; see tests/api/conftest.py
from server.api.handlers_feed import FEED
from server.store.repo import Store
from support.acmeclient import AcmeTestClient, b64u

FEED_PATH = "/feed/revocations"


def _token(h: Harness) -> str:
    return h.ctx.cfg.feed_token_path.read_text().strip()


async def _get(h: Harness, token: str | None = "", **params: Any) -> tuple[int, Any, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token or _token(h)}"}
    r = await h.http.get(FEED_PATH, params={k: str(v) for k, v in params.items()},
                         headers=headers)
    return r.status, await r.json(content_type=None), r.headers


async def _issue(h: Harness, c: AcmeTestClient, name: str) -> x509.Certificate:
    _, chain, _ = await h.issue(c, name)
    return x509.load_pem_x509_certificate(chain)


async def _revoke(c: AcmeTestClient, cert: x509.Certificate, reason: int = 1) -> None:
    der = cert.public_bytes(serialization.Encoding.DER)
    r = await c.post(c.url("revokeCert"), {"certificate": b64u(der), "reason": reason})
    assert r.status == 200, r.body


async def test_acme_revocation_appears_with_seq(harness: Harness) -> None:
    c = await harness.account()
    cert = await _issue(harness, c, "feed1.test")
    status, body, headers = await _get(harness, since=0)
    assert status == 200 and body["events"] == [] and body["next"] == 0
    await _revoke(c, cert, reason=1)

    status, body, headers = await _get(harness, since=0)
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    [event] = body["events"]
    assert event["seq"] == 1 and body["next"] == 1 and body["more"] is False
    assert int(event["serial"], 16) == cert.serial_number
    assert event["reason"] == 1
    # Stored with sub-second precision; the certificate truncates to seconds.
    assert datetime.fromisoformat(event["not_after"]).replace(microsecond=0) == cert.not_valid_after_utc
    assert datetime.fromisoformat(event["revoked_at"]) <= datetime.fromisoformat(body["server_time"])
    # Nothing beyond it: an empty answer keeps the caller's position.
    status, body, _ = await _get(harness, since=1, wait=0)
    assert (status, body["events"], body["next"]) == (200, [], 1)


async def test_long_poll_is_woken_by_an_in_process_revocation(make_harness: MakeHarness) -> None:
    # The head poll is slowed to an hour, so only the store's in-process wake can answer.
    h = await make_harness(feed={"poll_interval": "1h"})
    c = await h.account()
    cert = await _issue(h, c, "wake.test")
    poll = asyncio.create_task(_get(h, since=0, wait=25))
    await h.app[FEED].wait_for_waiters(1)
    assert not poll.done()
    await _revoke(c, cert)
    status, body, _ = await poll
    assert status == 200
    assert [int(e["serial"], 16) for e in body["events"]] == [cert.serial_number]
    assert h.app[FEED].waiting == 0


async def test_out_of_process_writer_is_picked_up(harness: Harness) -> None:
    c = await harness.account()
    cert = await _issue(harness, c, "cli.test")
    poll = asyncio.create_task(_get(harness, since=0, wait=25))
    await harness.app[FEED].wait_for_waiters(1)
    # What `nodetrust revoke` does: its own Store on the same file, no listener into this app.
    other = Store(harness.ctx.cfg.db_path)
    try:
        assert other.revoke_certificate(format(cert.serial_number, "x"), reason=4,
                                        when=datetime.now(timezone.utc))
    finally:
        other.close()
    status, body, _ = await poll
    assert status == 200
    [event] = body["events"]
    assert (event["seq"], int(event["serial"], 16), event["reason"]) == (1, cert.serial_number, 4)


async def test_feed_requires_the_bearer_token(harness: Harness) -> None:
    path = harness.ctx.cfg.feed_token_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.urlsafe_b64decode(_token(harness) + "=")) == 32
    for headers in ({}, {"Authorization": "Bearer nope"},
                    {"Authorization": f"Basic {_token(harness)}"},
                    {"Authorization": f"Bearer {_token(harness)}x"}):
        r = await harness.http.get(FEED_PATH, headers=headers)
        assert r.status == 401, headers
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        doc = await r.json(content_type=None)
        assert doc["type"].endswith(":unauthorized") and "feed.token" in doc["detail"]


async def test_bad_parameters_are_malformed(harness: Harness) -> None:
    for params in ({"since": "-1"}, {"since": "x"}, {"wait": "soon"}, {"wait": "nan"}):
        status, body, _ = await _get(harness, **params)
        assert status == 400 and body["type"].endswith(":malformed"), params
    # A position beyond the last event means the database was replaced: say so.
    status, body, _ = await _get(harness, since=7)
    assert status == 409 and "0" in body["detail"]


async def test_answers_are_paginated(make_harness: MakeHarness) -> None:
    h = await make_harness(feed={"page_size": 2})
    c = await h.account()
    certs = [await _issue(h, c, f"page{i}.test") for i in range(3)]
    for cert in certs:
        await _revoke(c, cert)
    _, first, _ = await _get(h, since=0, wait=25)
    assert [e["seq"] for e in first["events"]] == [1, 2]
    assert (first["next"], first["more"]) == (2, True)
    _, second, _ = await _get(h, since=first["next"], wait=25)
    assert [e["seq"] for e in second["events"]] == [3]
    assert (second["next"], second["more"]) == (3, False)
    got = [int(e["serial"], 16) for e in first["events"] + second["events"]]
    assert got == [cert.serial_number for cert in certs]


async def _crl(h: Harness) -> x509.CertificateRevocationList:
    r = await h.http.get("/crl/intermediate.crl")
    assert r.status == 200 and r.content_type == "application/pkix-crl"
    return x509.load_der_x509_crl(await r.read())


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


async def test_crl_lists_the_serial_right_after_revocation(harness: Harness) -> None:
    c = await harness.account()
    a, b = await _issue(harness, c, "crla.test"), await _issue(harness, c, "crlb.test")
    before = await _crl(harness)  # cached from here on
    assert before.get_revoked_certificate_by_serial_number(a.serial_number) is None
    await _revoke(c, a)
    after = await _crl(harness)
    assert after.get_revoked_certificate_by_serial_number(a.serial_number) is not None
    assert _crl_number(after) > _crl_number(before)
    assert after.next_update_utc is not None and after.next_update_utc > after.last_update_utc
    # Revoked by another process: the cache is keyed on the event seq, so it is seen too.
    other = Store(harness.ctx.cfg.db_path)
    try:
        other.revoke_certificate(format(b.serial_number, "x"), reason=0,
                                 when=datetime.now(timezone.utc))
    finally:
        other.close()
    last = await _crl(harness)
    assert last.get_revoked_certificate_by_serial_number(b.serial_number) is not None
    assert _crl_number(last) > _crl_number(after)


async def test_migration_backfills_revocations_made_before_the_feed(harness: Harness) -> None:
    c = await harness.account()
    cert = await _issue(harness, c, "old.test")
    await _revoke(c, cert, reason=5)
    path = harness.ctx.cfg.db_path
    legacy = Store(path)  # turn the file back into a schema-v1 database
    legacy.conn.execute("DROP TABLE revocation_events")
    legacy.conn.execute("DELETE FROM sqlite_sequence WHERE name = 'revocation_events'")
    legacy.conn.execute("DELETE FROM schema_migrations WHERE version = 2")
    legacy.close()
    migrated = Store(path)
    try:
        [event] = migrated.revocation_events_since(0, 10)
        assert (event.seq, int(event.serial, 16), event.reason) == (1, cert.serial_number, 5)
        assert migrated.revocation_head() == 1
    finally:
        migrated.close()
