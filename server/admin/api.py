"""The admin JSON API: what `nodetrust --server-admin URL ...` calls (the routes are
`server.cli.backend.ROUTES`). Bearer token on every call. Each handler is a thin adapter
onto `server.ops`; a change runs whole on the store's writer thread and answers with what
it changed."""
from __future__ import annotations

import json
from typing import Any, Callable

from aiohttp import web

from server import ops
from server.admin.app import ADMIN, AdminContext
from server.admin.auth import Operator
from server.config import ConfigError, parse_duration


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


def reply(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=_dumps)


def _duration(request: web.Request, name: str) -> Any:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        return parse_duration(raw, name, "query")
    except ConfigError as exc:
        raise ops.OpsError(str(exc)) from None


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        raise ops.OpsError("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ops.OpsError("the body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise ops.OpsError(f"{name!r} must be a string" if name in body else f"{name!r} is missing")
    return value


def _reader(request: web.Request) -> AdminContext:
    ctx = request.app[ADMIN]
    ctx.auth.bearer(request)
    return ctx


def _writer(request: web.Request) -> tuple[AdminContext, Operator]:
    """Authenticate a change before its body is read."""
    ctx = request.app[ADMIN]
    return ctx, ctx.auth.bearer(request)


async def _change(who: tuple[AdminContext, Operator], action: Callable[..., dict[str, Any]],
                  *args: Any, **kwargs: Any) -> web.Response:
    """Run one ops action on the writer thread, as the authenticated operator."""
    ctx, operator = who
    result = await ctx.store.write(action, ctx.store, *args, now=ctx.now(),
                                   actor=operator.actor, **kwargs)
    return reply(result)


# -- nodes ------------------------------------------------------------------------------------
async def nodes_list(request: web.Request) -> web.Response:
    ctx = _reader(request)
    q = request.query
    return reply(ops.list_nodes(ctx.store, ctx.now(), owner=q.get("owner") or None,
                                status=q.get("status") or None,
                                expiring_within=_duration(request, "expiring_within")))


async def nodes_show(request: web.Request) -> web.Response:
    ctx = _reader(request)
    return reply(ops.show_node(ctx.store, request.match_info["node"]))


async def expiring(request: web.Request) -> web.Response:
    """The expiry watch; `within` defaults to [admin] expiry_warning."""
    ctx = _reader(request)
    within = _duration(request, "within") or ctx.cfg.admin.expiry_warning
    return reply({"within_seconds": int(within.total_seconds()),
                  "nodes": ops.expiring(ctx.store, ctx.now(), within)})


async def node_action(request: web.Request) -> web.Response:
    who = _writer(request)
    node, action = request.match_info["node"], request.match_info["action"]
    body = await _body(request)
    if action == "approve":
        return await _change(who, ops.approve, node)
    if action == "readmit":
        return await _change(who, ops.readmit, node)
    if action == "decommission":
        return await _change(who, ops.decommission, node)
    if action == "set-owner":
        return await _change(who, ops.set_owner, node, _text(body, "owner"))
    if action == "label":
        labels = body.get("labels")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ops.OpsError("'labels' must be a list of \"k=v\" strings")
        return await _change(who, ops.set_labels, node, labels)
    raise web.HTTPNotFound(reason=f"no node action {action!r}")


async def revoke(request: web.Request) -> web.Response:
    who = _writer(request)
    body = await _body(request)
    serial, node = body.get("serial"), body.get("node")
    if not isinstance(serial, (str, type(None))) or not isinstance(node, (str, type(None))):
        raise ops.OpsError("'serial' and 'node' must be strings")
    return await _change(who, ops.revoke, serial=serial, node=node,
                         reason=_text(body, "reason", "unspecified"))


# -- bootstrap deny list and EAB keys -----------------------------------------------------------
async def bootstrap_list(request: web.Request) -> web.Response:
    return reply(ops.bootstrap_list(_reader(request).store))


async def bootstrap_change(request: web.Request) -> web.Response:
    who = _writer(request)
    body = await _body(request)
    value, serial = _text(body, "value"), bool(body.get("serial", False))
    if request.match_info["action"] == "deny":
        return await _change(who, ops.bootstrap_deny, value, serial=serial,
                             note=_text(body, "note", ""))
    return await _change(who, ops.bootstrap_allow, value, serial=serial)


async def eab_list(request: web.Request) -> web.Response:
    return reply(ops.eab_list(_reader(request).store))


async def eab_create(request: web.Request) -> web.Response:
    who = _writer(request)
    body = await _body(request)
    return await _change(who, ops.eab_create, _text(body, "note", ""))


async def eab_revoke(request: web.Request) -> web.Response:
    who = _writer(request)
    return await _change(who, ops.eab_revoke, request.match_info["kid"])


# -- the audit log ------------------------------------------------------------------------------
async def audit_list(request: web.Request) -> web.Response:
    q = request.query
    return reply(ops.audit_list(_reader(request).store, node=q.get("node") or None,
                                event=q.get("event") or None, limit=q.get("limit") or 50))


async def audit_verify(request: web.Request) -> web.Response:
    """200 with ok false when the chain is broken: the check ran, its answer is the body."""
    return reply(ops.audit_verify(_reader(request).store))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/nodes", nodes_list)
    r.add_get("/admin/expiring", expiring)
    r.add_post(r"/admin/nodes/{node:.+}/{action:approve|readmit|decommission|set-owner|label}",
               node_action)
    r.add_get("/admin/nodes/{node:.+}", nodes_show)
    r.add_post("/admin/revoke", revoke)
    r.add_get("/admin/bootstrap", bootstrap_list)
    r.add_post("/admin/bootstrap/{action:deny|allow}", bootstrap_change)
    r.add_get("/admin/eab", eab_list)
    r.add_post("/admin/eab", eab_create)
    r.add_post("/admin/eab/{kid}/revoke", eab_revoke)
    r.add_get("/admin/audit", audit_list)
    r.add_get("/admin/audit/verify", audit_verify)
