"""newOrder, order, finalize, authorization and challenge resources (RFC 8555 §7.4–7.5)."""
from __future__ import annotations

from aiohttp import web

from server.api import render
from server.api.auth import VerifiedRequest
from server.api.context import ApiContext, json_response
from server.errors import malformed
from server.models import Status


async def new_order(ctx: ApiContext, request: web.Request, vr: VerifiedRequest) -> web.Response:
    acct = vr.require_account()
    payload = vr.payload()
    ctx.new_order_limit.check(acct.id)
    order = await ctx.orders.new_order(acct, payload)
    return json_response(render.order(order, ctx.links), status=201,
                         location=ctx.links.order(order.id))


def _order_response(ctx: ApiContext, order_id: str, body: dict[str, object], status: str) -> web.Response:
    retry = ctx.cfg.acme.retry_after_seconds if status in (Status.PENDING, Status.PROCESSING) else None
    return json_response(body, location=ctx.links.order(order_id), retry_after=retry)


async def order(ctx: ApiContext, request: web.Request, vr: VerifiedRequest) -> web.Response:
    if not vr.is_post_as_get:
        raise malformed("fetch an order with POST-as-GET (empty payload)")
    o = await ctx.orders.get_order(vr.require_account(), request.match_info["id"])
    return _order_response(ctx, o.id, render.order(o, ctx.links), o.status)


async def finalize(ctx: ApiContext, request: web.Request, vr: VerifiedRequest) -> web.Response:
    acct = vr.require_account()
    payload = vr.payload()
    o = await ctx.orders.get_order(acct, request.match_info["id"])
    o = await ctx.issuance.finalize(acct, o, payload)
    return _order_response(ctx, o.id, render.order(o, ctx.links), o.status)


async def authz(ctx: ApiContext, request: web.Request, vr: VerifiedRequest) -> web.Response:
    acct = vr.require_account()
    authz_id = request.match_info["id"]
    if vr.is_post_as_get:
        a = ctx.orders.authz_for(acct, authz_id)
    else:
        if vr.payload().get("status") != Status.DEACTIVATED:
            raise malformed("the only change a client may make to an authorization is "
                            '{"status": "deactivated"}')
        a = await ctx.orders.deactivate_authz(acct, authz_id)
    retry = ctx.cfg.acme.retry_after_seconds if a.status == Status.PENDING else None
    return json_response(render.authorization(a, ctx.links), location=ctx.links.authz(a.id),
                         retry_after=retry)


async def challenge(ctx: ApiContext, request: web.Request, vr: VerifiedRequest) -> web.Response:
    acct = vr.require_account()
    chall_id = request.match_info["id"]
    if vr.is_post_as_get:
        ch, a = ctx.orders.challenge_for(acct, chall_id)
    else:
        # any JSON object means "validate now" (§7.5.1); device-attest-01 carries attObj
        ch, a = await ctx.orders.respond(acct, chall_id, vr.payload())
    retry = ctx.cfg.acme.retry_after_seconds if ch.status == Status.PROCESSING else None
    return json_response(render.challenge(ch, ctx.links),
                         links=(f'<{ctx.links.authz(a.id)}>;rel="up"',), retry_after=retry)
