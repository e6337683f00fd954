"""The admin listener in process: token auth, every admin API endpoint, the CLI's remote
backend against it, /metrics agreeing with the store, and the dashboard's login cookie."""
from __future__ import annotations

import asyncio
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509
from support.harness import Harness, MakeHarness
from test_device_attest import Factory, _attest, _enroll

from server.admin.app import create_admin_app
from server.api.handlers_feed import FEED
from server.cli.backend import ROUTES, RemoteBackend
from server.cli.output import CliError
from server.models import Status

Sample = tuple[str, dict[str, str], float]


@dataclass
class Admin:
    h: Harness
    http: TestClient[Any, Any]
    token: str
    factory: Factory

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    async def get(self, path: str, expect: int = 200, **params: str) -> Any:
        r = await self.http.get(path, headers=self.auth(), params=params)
        assert r.status == expect, (path, r.status, await r.text())
        return await r.json()

    async def post(self, path: str, body: Any = None, expect: int = 200) -> Any:
        r = await self.http.post(path, headers=self.auth(), json=body or {})
        assert r.status == expect, (path, r.status, await r.text())
        return await r.json()

    async def enroll(self, device_id: str) -> x509.Certificate:
        cert, key = self.factory.device(device_id)
        return await _enroll(self.h, await self.h.account(), cert, key,
                             {"type": "permanent-identifier", "value": device_id})

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        r = await self.http.get("/metrics", headers=self.auth())
        assert r.status == 200 and r.content_type == "text/plain"
        return {(name, frozenset(labels.items())): v for name, labels, v in
                parse_exposition(await r.text())}


@pytest.fixture
async def make_admin(make_harness: MakeHarness, tmp_path: Path, aiohttp_client: Any) -> Any:
    async def make(**tables: dict[str, Any]) -> Admin:
        factory = Factory(tmp_path / "roots")
        attestation = {"roots_dir": str(factory.roots)} | tables.pop("attestation", {})
        h = await make_harness(attestation=attestation, **tables)
        http = await aiohttp_client(create_admin_app(h.app))
        token = h.ctx.cfg.admin_token_path.read_text().strip()
        return Admin(h, http, token, factory)
    return make


@pytest.fixture
async def admin(make_admin: Any) -> Admin:
    a: Admin = await make_admin(admin={"expiry_warning": "25h"})
    return a


LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.e+-]+|\+Inf|NaN)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> list[Sample]:
    """A strict reader of the text format: every sample belongs to a family declared by
    HELP and TYPE lines before it."""
    families: dict[str, str] = {}
    samples: list[Sample] = []
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in families
            families[name] = kind
            continue
        m = LINE.match(line)
        assert m, f"not an exposition line: {line!r}"
        name = m.group(1)
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in families or families.get(base) == "histogram", f"undeclared {name}"
        labels = dict(LABEL.findall(m.group(3) or ""))
        samples.append((name, labels, float(m.group(4))))
    return samples


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


# -- authentication ----------------------------------------------------------------------------
async def test_token_file_is_private_and_every_route_needs_it(admin: Admin) -> None:
    path = admin.h.ctx.cfg.admin_token_path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(admin.token) >= 40
    for method, template in ROUTES.values():
        url = template.replace("{node}", "x").replace("{kid}", "k")
        for headers in ({}, admin.auth("wrong"), {"Authorization": f"Basic {admin.token}"}):
            r = await admin.http.request(method, url, headers=headers, json={})
            assert r.status == 401, (method, url, headers)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert "admin.token" in (await r.json())["detail"]
    assert (await admin.http.get("/metrics")).status == 401
    assert await admin.get("/admin/nodes") == []


# -- the admin API -------------------------------------------------------------------------------
async def test_inventory_owner_labels_filters_and_show(admin: Admin) -> None:
    leaf = await admin.enroll("ADM-1")
    await admin.enroll("ADM-2")
    out = await admin.post("/admin/nodes/adm-1/set-owner", {"owner": "team-edge"})
    assert out == {"node": "adm-1", "owner": "team-edge", "previous_owner": None}
    out = await admin.post("/admin/nodes/ADM-1/label", {"labels": ["site=lyon", "role=gw"]})
    assert out["labels"] == {"site": "lyon", "role": "gw"} and out["previous_labels"] == {}
    await admin.post("/admin/nodes/adm-1/label", {"labels": ["oops"]}, expect=400)
    rows = {r["node"]: r for r in await admin.get("/admin/nodes")}
    assert set(rows) == {"adm-1", "adm-2"}
    assert rows["adm-1"]["owner"] == "team-edge" and rows["adm-1"]["labels"] == "role=gw,site=lyon"
    assert rows["adm-1"]["serial"] == format(leaf.serial_number, "x")
    assert [r["node"] for r in await admin.get("/admin/nodes", owner="team-edge")] == ["adm-1"]
    assert len(await admin.get("/admin/nodes", status="active")) == 2
    r = await admin.http.get("/admin/nodes", headers=admin.auth(), params={"status": "bogus"})
    assert r.status == 400 and "bogus" in (await r.json())["detail"]
    assert len(await admin.get("/admin/nodes", expiring_within="25h")) == 2
    assert await admin.get("/admin/nodes", expiring_within="1h") == []
    shown = await admin.get("/admin/nodes/adm-1.nodes.nodetrust.internal")
    assert shown["device_id"] == "ADM-1" and shown["certificates"][0]["status"] == "valid"
    missing = await admin.get("/admin/nodes/nope", expect=404)
    assert "no node 'nope'" in missing["detail"]


async def test_decommission_readmit_revoke_and_approve(admin: Admin) -> None:
    first = await admin.enroll("DEC-1")
    second = await admin.enroll("REV-1")
    out = await admin.post("/admin/nodes/dec-1/decommission")
    assert out == {"node": "dec-1", "status": "decommissioned", "previous_status": "active",
                   "revoked": [format(first.serial_number, "x")]}
    revoked = admin.h.ctx.store.get_certificate(out["revoked"][0])
    assert revoked is not None and revoked.status == Status.REVOKED
    out = await admin.post("/admin/nodes/dec-1/readmit")
    assert out["status"] == "pending" and out["previous_status"] == "decommissioned"
    await admin.post("/admin/nodes/dec-1/readmit", expect=409)
    await admin.post("/admin/nodes/dec-1/approve", expect=409)
    serial = format(second.serial_number, "x")
    await admin.post("/admin/revoke", {"serial": serial, "reason": "bogus"}, expect=400)
    out = await admin.post("/admin/revoke", {"serial": serial, "reason": "keyCompromise"})
    assert out == {"revoked": [serial], "reason": "keycompromise"}
    assert "already revoked" in (await admin.post("/admin/revoke", {"serial": serial},
                                                  expect=409))["detail"]
    await admin.post("/admin/revoke", {"node": "rev-1"}, expect=409)
    await admin.post("/admin/revoke", {}, expect=400)
    await admin.post("/admin/nodes/dec-1/explode", expect=405)


async def test_approve_a_pending_rejoin(make_admin: Any) -> None:
    a: Admin = await make_admin(attestation={"rejoin": "approve"})
    cert, key = a.factory.device("REJ-1")
    await _enroll(a.h, await a.h.account(), cert, key,
                  {"type": "permanent-identifier", "value": "REJ-1"})
    c2 = await a.h.account()
    _, r, _ = await _attest(c2, {"type": "permanent-identifier", "value": "REJ-1"}, cert, key)
    assert r.json["status"] == "processing"
    assert await a.post("/admin/nodes/rej-1/approve") == {"node": "rej-1", "approved": 1}


async def test_bootstrap_deny_list_and_eab_keys(admin: Admin) -> None:
    assert await admin.post("/admin/bootstrap/deny", {"value": "SN-9", "note": "stolen"}) == {
        "denied": "SN-9", "kind": "device", "note": "stolen"}
    await admin.post("/admin/bootstrap/deny", {"value": "SN-9"}, expect=409)
    assert (await admin.post("/admin/bootstrap/deny", {"value": "00AB", "serial": True}))[
        "denied"] == "ab"
    assert [r["value"] for r in await admin.get("/admin/bootstrap")] == ["SN-9", "ab"]
    assert await admin.post("/admin/bootstrap/allow", {"value": "SN-9"}) == {"allowed": "SN-9"}
    await admin.post("/admin/bootstrap/allow", {"value": "SN-9"}, expect=404)
    await admin.post("/admin/bootstrap/deny", {"note": "no value"}, expect=400)
    created = await admin.post("/admin/eab", {"note": "lego on host 7"})
    assert created["kid"].startswith("kid-") and len(created["hmac_key"]) >= 43
    listed = await admin.get("/admin/eab")
    assert [(k["kid"], k["status"], k["note"]) for k in listed] == [
        (created["kid"], "unused", "lego on host 7")]
    assert await admin.post(f"/admin/eab/{created['kid']}/revoke") == {
        "kid": created["kid"], "revoked": True, "account": None}
    await admin.post(f"/admin/eab/{created['kid']}/revoke", expect=409)
    await admin.post("/admin/eab/kid-nope/revoke", expect=404)
    r = await admin.http.post("/admin/eab", headers=admin.auth(), data=b"[1]")
    assert r.status == 400


async def test_audit_list_and_verify_name_the_admin(admin: Admin) -> None:
    await admin.enroll("AUD-1")
    await admin.post("/admin/nodes/aud-1/set-owner", {"owner": "ops"})
    events = await admin.get("/admin/audit", node="aud-1")
    mine = [e for e in events if e["actor"] == "admin:token"]
    assert mine and mine[-1]["event"].startswith("node.")
    verified = await admin.get("/admin/audit/verify")
    assert verified["ok"] is True and verified["rows"] >= len(events)


async def test_expiry_watch_ignores_a_node_with_a_renewal_in_flight(admin: Admin) -> None:
    leaf = await admin.enroll("EXP-1")
    await admin.enroll("EXP-2")
    watch = await admin.get("/admin/expiring")
    assert watch["within_seconds"] == 25 * 3600
    assert {n["node"] for n in watch["nodes"]} == {"exp-1", "exp-2"}
    assert all(0 < n["seconds_left"] <= 24 * 3600 for n in watch["nodes"])
    assert (await admin.get("/admin/expiring", within="1h"))["nodes"] == []
    stored = admin.h.ctx.store.get_certificate(format(leaf.serial_number, "x"))
    assert stored is not None
    c = await admin.h.account()
    r = await c.post(c.url("newOrder"), {"identifiers": [
        {"type": "permanent-identifier", "value": "EXP-1"}], "replaces": stored.ari_id})
    assert r.status == 201, r.body
    assert {n["node"] for n in (await admin.get("/admin/expiring"))["nodes"]} == {"exp-2"}
    metrics = await admin.metrics()
    assert metrics[key("nodetrust_expiry_watch_nodes", window="25h")] == 1
    assert metrics[key("nodetrust_expiry_watch_seconds_left", node="exp-2", owner="")] > 0


async def test_the_cli_remote_backend_speaks_every_route(admin: Admin) -> None:
    """RemoteBackend (what `nodetrust --server-admin` uses) against the real admin app."""
    await admin.enroll("CLI-1")
    url = str(admin.http.make_url("")).rstrip("/")
    remote = RemoteBackend(url, admin.token, None)

    def call(op: str, **params: Any) -> Any:
        return asyncio.to_thread(remote.call, op, **params)

    assert [r["node"] for r in await call("nodes.list", expiring_within="2d")] == ["cli-1"]
    assert (await call("nodes.set_owner", node="cli-1", owner="a b/c"))["owner"] == "a b/c"
    assert (await call("nodes.show", node="CLI-1"))["owner"] == "a b/c"
    assert (await call("nodes.label", node="cli-1", labels=["x=1"]))["labels"] == {"x": "1"}
    assert (await call("bootstrap.deny", value="Z-1", serial=False, note=""))["denied"] == "Z-1"
    assert len(await call("bootstrap.list")) == 1
    assert (await call("bootstrap.allow", value="Z-1", serial=False))["allowed"] == "Z-1"
    kid = (await call("eab.create", note="n"))["kid"]
    assert [k["kid"] for k in await call("eab.list")] == [kid]
    assert (await call("eab.revoke", kid=kid))["revoked"] is True
    assert (await call("audit.verify"))["ok"] is True
    assert await call("audit.list", limit=5)
    assert (await call("nodes.decommission", node="cli-1"))["status"] == "decommissioned"
    assert (await call("nodes.readmit", node="cli-1"))["status"] == "pending"
    with pytest.raises(CliError, match="no rejoin waiting"):
        await call("nodes.approve", node="cli-1")
    with pytest.raises(CliError, match="no valid certificate"):
        await call("revoke", node="cli-1", reason="unspecified")
    with pytest.raises(CliError, match=r"refused the token \(401\)"):
        await asyncio.to_thread(RemoteBackend(url, "wrong", None).call, "nodes.list")


# -- metrics ---------------------------------------------------------------------------------------
async def test_metrics_agree_with_the_store_after_enrolling_and_revoking(admin: Admin) -> None:
    before = await admin.metrics()
    assert before[key("nodetrust_certificates", status="valid")] == 0
    assert before[key("nodetrust_feed_subscribers")] == 0
    leaf = await admin.enroll("MET-1")
    await admin.enroll("MET-2")
    cert, bkey = admin.factory.device("MET-3")
    _, refused, _ = await _attest(await admin.h.account(), {
        "type": "permanent-identifier", "value": "MET-3"}, cert, bkey, key_authz="wrong.token")
    assert refused.json["status"] == "invalid"
    await admin.post("/admin/revoke", {"serial": format(leaf.serial_number, "x"),
                                       "reason": "keycompromise"})
    m = await admin.metrics()
    store = admin.h.ctx.store
    valid = [c for d in ("MET-1", "MET-2") for c in store.certificates_of_device(d)
             if c.status == Status.VALID]
    assert m[key("nodetrust_certificates", status="valid")] == len(valid) == 1
    assert m[key("nodetrust_certificates", status="revoked")] == 1
    assert m[key("nodetrust_certificates", status="expired")] == 0
    assert m[key("nodetrust_certificates_expiring", within="1h")] == 0
    assert m[key("nodetrust_certificates_expiring", within="24h")] == 1
    assert m[key("nodetrust_certificates_expiring", within="7d")] == 1
    assert m[key("nodetrust_revoked_certificates", reason="keyCompromise")] == 1
    assert m[key("nodetrust_nodes", status="active")] == 2
    assert m[key("nodetrust_feed_head_seq")] == store.revocation_head() == 1
    assert m[key("nodetrust_challenge_results_total", type="device-attest-01", result="valid",
                 error="")] == 2
    assert m[key("nodetrust_challenge_results_total", type="device-attest-01",
                 result="invalid", error="badAttestationStatement")] == 1
    assert m[key("nodetrust_device_enrollments_total", format="step", result="valid",
                 reason="")] == 2
    assert m[key("nodetrust_device_enrollments_total", format="step", result="invalid",
                 reason="signature mismatch")] == 1
    assert m[key("nodetrust_certificates_issued_total", kind="device")] == 2
    assert m[key("nodetrust_issuance_latency_seconds_count")] == 2
    assert m[key("nodetrust_issuance_latency_seconds_bucket", le="+Inf")] == 2
    assert m[key("nodetrust_finalize_duration_seconds_count")] == 2
    buckets = [v for (name, _), v in m.items() if name == "nodetrust_finalize_duration_seconds_bucket"]
    assert buckets == sorted(buckets)  # cumulative
    writes, commits = m[key("nodetrust_store_writes_total")], m[key("nodetrust_store_commits_total")]
    assert writes > before[key("nodetrust_store_writes_total")]  # enrolling wrote, durably
    assert 0 < commits <= writes


async def test_feed_subscribers_and_lag(admin: Admin) -> None:
    leaf = await admin.enroll("FEED-1")
    await admin.post("/admin/revoke", {"serial": format(leaf.serial_number, "x")})
    feed_token = admin.h.ctx.cfg.feed_token_path.read_text().strip()
    headers = {"Authorization": f"Bearer {feed_token}"}
    behind = await admin.h.http.get("/feed/revocations?since=0", headers=headers)
    assert behind.status == 200
    parked = asyncio.ensure_future(admin.h.http.get("/feed/revocations?since=1&wait=20",
                                                    headers=headers))
    await admin.h.app[FEED].wait_for_waiters(1)
    m = await admin.metrics()
    assert m[key("nodetrust_feed_subscribers")] == 1
    assert m[key("nodetrust_feed_lag_events")] == 1  # someone asked from 0 with head at 1
    await admin.h.app[FEED].close()
    assert (await parked).status == 200


# -- the dashboard's login ---------------------------------------------------------------------
async def test_dashboard_login_cookie_is_strict_and_read_only(admin: Admin) -> None:
    await admin.enroll("WEB-1")
    await admin.post("/admin/nodes/web-1/set-owner", {"owner": "<script>alert(1)</script>"})
    r = await admin.http.get("/admin/", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/admin/login"
    r = await admin.http.post("/admin/login", data={"token": "wrong"}, allow_redirects=False)
    assert r.status == 401 and "not the admin token" in await r.text()
    r = await admin.http.post("/admin/login", data={"token": admin.token}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/admin/"
    cookie = r.headers["Set-Cookie"]
    for attr in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/admin/"):
        assert attr in cookie, cookie
    session = cookie.split(";")[0]
    page = await admin.http.get("/admin/", headers={"Cookie": session})
    assert page.status == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    html = await page.text()
    assert "web-1" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert" not in html and 'id="expiry-svg"' in html
    assert "admin.login" in html  # the login is in the audit log shown on the page
    # The cookie opens pages, never changes or the API.
    r = await admin.http.post("/admin/nodes/web-1/decommission", headers={"Cookie": session})
    assert r.status == 401
    assert (await admin.http.get("/admin/nodes", headers={"Cookie": session})).status == 401
    forged = session.rsplit(".", 1)[0] + ".00"
    r = await admin.http.get("/admin/", headers={"Cookie": forged}, allow_redirects=False)
    assert r.status == 303
    r = await admin.http.post("/admin/login", data={"token": admin.token},
                              headers={"Origin": "https://evil.example"}, allow_redirects=False)
    assert r.status == 403
    assert (await admin.http.get("/admin/login?token=" + admin.token)).status == 403
    js = await admin.http.get("/admin/static/dashboard.js")
    assert js.status == 200 and js.content_type == "text/javascript"
    assert (await admin.http.get("/admin/static/../app.py")).status == 404


async def test_token_in_url_login_when_switched_on(make_admin: Any) -> None:
    a: Admin = await make_admin(admin={"token_in_url": True})
    r = await a.http.get("/admin/login", params={"token": "wrong"}, allow_redirects=False)
    assert r.status == 401
    r = await a.http.get("/admin/login", params={"token": a.token}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/admin/"
    assert "HttpOnly" in r.headers["Set-Cookie"]
