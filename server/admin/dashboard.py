"""The operator dashboard at /admin/: server-rendered HTML, a little vanilla JS for sorting
and filtering (static/dashboard.js), an inline SVG chart. No build chain.

Every value from the store goes through `html.escape` (`_e`). The Content-Security-Policy
allows only this listener's own script and stylesheet: no inline script, no inline style.
Login: POST /admin/login with the admin token sets the session cookie (see `auth`);
GET /admin/login?token=... does the same when `[admin] token_in_url` is on.
"""
from __future__ import annotations

import html
import json
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

from aiohttp import web

from server import ops
from server.admin.app import ADMIN, AdminContext
from server.admin.auth import Unauthorized
from server.models import NodeStatus
from server.ra.revocation import ALLOWED_REASONS
from server.store import stats

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
CHART_SPAN, CHART_STEP = timedelta(days=7), timedelta(hours=6)
AUDIT_ROWS = 20


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%d %H:%M UTC") if dt else "-"


def _left(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "expired"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h" if days else f"{hours}h {rest // 60}m"


def page(title: str, body: str, status: int = 200) -> web.Response:
    doc = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
           "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
           f"<title>{_e(title)}</title><link rel=\"stylesheet\" href=\"/admin/static/dashboard.css\">"
           f"</head><body>{body}<script src=\"/admin/static/dashboard.js\"></script></body></html>")
    resp = web.Response(status=status, text=doc, content_type="text/html")
    resp.headers["Content-Security-Policy"] = CSP
    return resp


def redirect(location: str, status: int = 303) -> web.Response:
    return web.Response(status=status, headers={"Location": location})


# -- login -------------------------------------------------------------------------------------
def login_page(message: str = "", status: int = 200) -> web.Response:
    note = f"<p class=\"error\" role=\"alert\">{_e(message)}</p>" if message else ""
    return page("nodetrust — log in", (
        "<main class=\"login\"><h1>nodetrust operator dashboard</h1>" + note +
        "<form method=\"post\" action=\"/admin/login\"><label for=\"token\">Admin token "
        "(<code>&lt;data-dir&gt;/admin.token</code>)</label>"
        "<input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" "
        "required autofocus><button type=\"submit\">Log in</button></form></main>"), status)


async def _logged_in(ctx: AdminContext, via: str, remote: str | None) -> web.Response:
    ctx.telemetry.admin_logins.inc(result="ok")
    await ctx.store.write(ctx.store.audit, "admin.login", f"admin:{via}", "dashboard",
                          {"from": remote})
    resp = redirect("/admin/")
    ctx.auth.set_cookie(resp)
    return resp


async def login_form(request: web.Request) -> web.StreamResponse:
    ctx = request.app[ADMIN]
    if "token" not in request.query:
        return login_page()
    if not ctx.cfg.admin.token_in_url:
        return login_page("Logging in with ?token= is switched off ([admin] token_in_url); "
                          "use this form.", 403)
    if not ctx.auth.token_ok(request.query["token"]):
        ctx.telemetry.admin_logins.inc(result="refused")
        return login_page("That is not the admin token.", 401)
    return await _logged_in(ctx, "token-url", request.remote)


async def login(request: web.Request) -> web.StreamResponse:
    ctx = request.app[ADMIN]
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return login_page("Cross-site login refused.", 403)
    form = await request.post()
    token = form.get("token")
    if not isinstance(token, str) or not ctx.auth.token_ok(token):
        ctx.telemetry.admin_logins.inc(result="refused")
        return login_page("That is not the admin token.", 401)
    return await _logged_in(ctx, "login-form", request.remote)


async def logout(request: web.Request) -> web.StreamResponse:
    resp = redirect("/admin/login")
    request.app[ADMIN].auth.clear_cookie(resp)
    return resp


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    text = resources.files("server.admin").joinpath("static", name).read_text()
    return web.Response(text=text, content_type=STATIC[name],
                        headers={"Cache-Control": "no-cache"})


# -- the dashboard -------------------------------------------------------------------------------
async def dashboard(request: web.Request) -> web.StreamResponse:
    ctx = request.app[ADMIN]
    try:
        ctx.auth.reader(request)
    except Unauthorized:
        return redirect("/admin/login")
    now = ctx.now()
    window = ctx.cfg.admin.expiry_warning
    rows = ops.list_nodes(ctx.store, now)
    watch = stats.expiry_watch(ctx.store, now, window)
    certs = stats.certificates_by_status(ctx.store, now)
    body = "".join([
        "<header><h1>nodetrust</h1><span class=\"clock\">", _e(_when(now)),
        ("</span><form method=\"post\" action=\"/admin/logout\"><button>Log out</button>"
         "</form></header><main>"),
        _summary(rows, certs, len(watch), window),
        _watch(watch, now, window),
        _nodes(rows, now, {e.device_id for e in watch}),
        _chart(stats.expiry_buckets(ctx.store, now, CHART_SPAN, CHART_STEP), now, window),
        _revocations(stats.recent_revocations(ctx.store)),
        _audit(ctx),
        "</main>"])
    return page("nodetrust — operator dashboard", body)


def _summary(rows: list[dict[str, Any]], certs: dict[str, int], at_risk: int,
             window: timedelta) -> str:
    count = {s: sum(1 for r in rows if r["status"] == s) for s in ops.NODE_STATUSES}
    cards = [("Active nodes", count[NodeStatus.ACTIVE], "summary-active"),
             ("Pending", count[NodeStatus.PENDING], "summary-pending"),
             ("Decommissioned", count[NodeStatus.DECOMMISSIONED], "summary-decommissioned"),
             ("Valid certificates", certs.get("valid", 0), "summary-valid"),
             (f"Expiring within {_e(_span(window))}", at_risk, "summary-at-risk")]
    return "<section class=\"summary\" aria-label=\"Summary\">" + "".join(
        f"<div class=\"card{' warn' if cls == 'summary-at-risk' and n else ''}\" id=\"{cls}\">"
        f"<span class=\"n\">{n}</span><span class=\"what\">{label}</span></div>"
        for label, n, cls in cards) + "</section>"


def _span(td: timedelta) -> str:
    hours = td.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 48 else f"{hours:g} h"


def _watch(watch: list[stats.ExpiringNode], now: datetime, window: timedelta) -> str:
    head = (f"<section id=\"expiry-watch\"><h2>Expiry watch <small>certificate ends within "
            f"{_e(_span(window))}, no renewal in sight</small></h2>")
    if not watch:
        return head + "<p class=\"ok\">No node at risk.</p></section>"
    return head + "<table><thead><tr><th>Node</th><th>Owner</th><th>Expires</th><th>Left</th>" \
        "</tr></thead><tbody>" + "".join(
            f"<tr class=\"warn\"><td>{_e(e.node_id)}</td><td>{_e(e.owner or '-')}</td>"
            f"<td>{_e(_when(e.not_after))}</td><td>{_e(_left(e.not_after - now))}</td></tr>"
            for e in watch) + "</tbody></table></section>"


def _nodes(rows: list[dict[str, Any]], now: datetime, at_risk: set[str]) -> str:
    cols = [("node", "Node", "text"), ("status", "Status", "text"), ("owner", "Owner", "text"),
            ("labels", "Labels", "text"), ("manufacturer", "Manufacturer", "text"),
            ("expires", "Expires", "number"), ("left", "Left", "number")]
    head = "".join(f"<th data-type=\"{t}\" aria-sort=\"none\"><button type=\"button\">{_e(label)}"
                   "</button></th>" for _key, label, t in cols)
    body = []
    for r in rows:
        expires = datetime.fromisoformat(r["expires"]) if r["expires"] else None
        stamp = int(expires.timestamp()) if expires else 0
        labels = "".join(f"<span class=\"label\">{_e(x)}</span>"
                         for x in r["labels"].split(",") if x)
        warn = " warn" if r["device_id"] in at_risk else ""
        body.append(
            f"<tr class=\"node{warn}\" data-status=\"{_e(r['status'])}\">"
            f"<td data-value=\"{_e(r['node'])}\" title=\"{_e(r['dns_name'])}\">{_e(r['node'])}</td>"
            f"<td data-value=\"{_e(r['status'])}\"><span class=\"status status-{_e(r['status'])}\">"
            f"{_e(r['status'])}</span></td>"
            f"<td data-value=\"{_e(r['owner'] or '')}\">{_e(r['owner'] or '-')}</td>"
            f"<td data-value=\"{_e(r['labels'])}\">{labels or '-'}</td>"
            f"<td data-value=\"{_e(r['manufacturer'])}\">{_e(r['manufacturer'])}</td>"
            f"<td data-value=\"{stamp}\">{_e(_when(expires))}</td>"
            f"<td data-value=\"{stamp}\">{_e(_left(expires - now) if expires else '-')}</td></tr>")
    options = "".join(f"<option value=\"{s}\">{s}</option>" for s in ops.NODE_STATUSES)
    return ("<section id=\"nodes\"><h2>Nodes</h2><div class=\"controls\">"
            "<input id=\"node-filter\" type=\"search\" placeholder=\"Filter by node, owner, "
            "label…\" aria-label=\"Filter nodes\"><select id=\"status-filter\" "
            f"aria-label=\"Status\"><option value=\"\">any status</option>{options}</select>"
            f"<span id=\"node-count\">{len(rows)} of {len(rows)} nodes</span></div>"
            f"<table id=\"nodes-table\"><thead><tr>{head}</tr></thead><tbody>"
            + ("".join(body) or "<tr><td colspan=\"7\">No node has enrolled yet.</td></tr>")
            + "</tbody></table></section>")


def _chart(buckets: list[int], now: datetime, window: timedelta) -> str:
    """Bars of certificates ending per 6 hours over the coming 7 days; bars inside the
    expiry-warning window are marked."""
    width, height, pad_l, pad_b, top = 860, 220, 40, 40, 16
    plot_w, plot_h = width - pad_l - 10, height - pad_b - top
    peak = max(buckets) or 1
    bar_w = plot_w / len(buckets)
    axis_y = top + plot_h
    tick = f"<text class=\"tick\" x=\"{pad_l - 6}\" text-anchor=\"end\""
    parts = [(f"<line class=\"axis\" x1=\"{pad_l}\" y1=\"{axis_y}\" x2=\"{width - 10}\" "
              f"y2=\"{axis_y}\"/>"),
             f"{tick} y=\"{top + 4}\">{peak}</text>", f"{tick} y=\"{axis_y}\">0</text>"]
    for i, n in enumerate(buckets):
        start = now + CHART_STEP * i
        x = pad_l + i * bar_w
        if i % 4 == 0:
            parts.append(f"<text class=\"tick\" x=\"{x + 2:.1f}\" y=\"{height - 20}\">"
                         f"{_e(start.strftime('%a %d'))}</text>")
        if not n:
            continue
        h = max(2.0, plot_h * n / peak)
        cls = "bar warn" if start < now + window else "bar"
        title = (f"{n} certificate(s) expire between {_when(start)} and "
                 f"{_when(start + CHART_STEP)}")
        parts.append(f"<rect class=\"{cls}\" data-count=\"{n}\" x=\"{x + 1:.1f}\" "
                     f"y=\"{top + plot_h - h:.1f}\" width=\"{bar_w - 2:.1f}\" height=\"{h:.1f}\">"
                     f"<title>{_e(title)}</title></rect>"
                     f"<text class=\"count\" x=\"{x + bar_w / 2:.1f}\" y=\"{top + plot_h - h - 3:.1f}\" "
                     f"text-anchor=\"middle\">{n}</text>")
    total = sum(buckets)
    return ("<section id=\"expiry-chart\"><h2>Certificate expiries, next 7 days "
            f"<small>{total} valid certificate(s), per 6 hours</small></h2>"
            f"<svg id=\"expiry-svg\" role=\"img\" viewBox=\"0 0 {width} {height}\" "
            f"aria-label=\"{total} certificates expire in the next 7 days\" "
            f"data-total=\"{total}\">{''.join(parts)}</svg></section>")


def _revocations(recent: list[stats.RecentRevocation]) -> str:
    head = "<section id=\"revocations\"><h2>Recent revocations</h2>"
    if not recent:
        return head + "<p>None yet.</p></section>"
    return head + "<table><thead><tr><th>When</th><th>Node</th><th>Serial</th><th>Reason</th>" \
        "</tr></thead><tbody>" + "".join(
            f"<tr><td>{_e(_when(r.revoked_at))}</td><td>{_e(r.node_id or '-')}</td>"
            f"<td><code>{_e(r.serial)}</code></td>"
            f"<td>{_e(ALLOWED_REASONS.get(r.reason, r.reason))}</td></tr>"
            for r in recent) + "</tbody></table></section>"


def _audit(ctx: AdminContext) -> str:
    """The newest audit events (hash-chained log, server/store/audit.py), newest first."""
    events = ops.audit_list(ctx.store, limit=AUDIT_ROWS)[::-1]
    rows = "".join(
        f"<tr><td>{e['seq']}</td><td class=\"when\">{_e(e['at'][:19].replace('T', ' '))}</td>"
        f"<td>{_e(e['event'])}</td><td>{_e(e['actor'])}</td><td>{_e(e['node'] or '-')}</td>"
        f"<td class=\"detail\">{_e(_detail(e['detail']))}</td></tr>" for e in events)
    return ("<section id=\"audit\"><h2>Recent audit events <small><code>nodetrust audit verify"
            "</code> checks the chain</small></h2><table><thead><tr><th>#</th><th>When (UTC)</th>"
            "<th>Event</th><th>Actor</th><th>Node</th><th>Details</th></tr></thead><tbody>"
            + (rows or "<tr><td colspan=\"6\">None yet.</td></tr>") + "</tbody></table></section>")


def _detail(detail: dict[str, Any]) -> str:
    text = " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v, sort_keys=True)}"
                    for k, v in sorted(detail.items()))
    return text if len(text) <= 80 else text[:79] + "…"


async def _to_dashboard(_: web.Request) -> web.Response:
    return redirect("/admin/", 308)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/", dashboard)
    r.add_get("/admin", _to_dashboard)
    r.add_get("/admin/login", login_form)
    r.add_post("/admin/login", login)
    r.add_post("/admin/logout", logout)
    r.add_get("/admin/static/{name}", static)
