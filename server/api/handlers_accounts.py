"""newAccount, account update/deactivation, orders list, keyChange (RFC 8555 §7.3)."""
from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from server.api import render
from server.api.auth import VerifiedRequest
from server.api.context import ApiContext, json_response
from server.errors import malformed, unauthorized

ORDERS_PAGE = 100


async def new_account(ctx: ApiContext, request: web.Request, vr: VerifiedRequest) -> web.Response:
    assert vr.jwk is not None
    payload = vr.payload()
    # The rate limit is checked before the account is stored (it used to run after the
    # insert, so a "rateLimited" reply still left a new account behind).
    acct, created = await ctx.accounts.new_account(
        vr.jws, vr.jwk, payload, ctx.links.new_account(),
        admit=lambda: ctx.new_account_limit.check(request.remote or "?"))
    return json_response(render.account(acct, ctx.links), status=201 if created else 200,
                         location=ctx.links.account(acct.id))


def _own_account(ctx: ApiContext, request: web.Request, vr: VerifiedRequest) -> str:
    acct = vr.require_account()
    if request.match_info["id"] != acct.id:
        raise unauthorized("the request is signed by another account")
    return acct.id


async def account(ctx: ApiContext, request: web.Request, vr: VerifiedRequest) -> web.Response:
    _own_account(ctx, request, vr)
    acct = vr.require_account()
    if not vr.is_post_as_get:
        acct = await ctx.accounts.update(acct, vr.payload())
        ctx.verifier.forget(acct.id)
    return json_response(render.account(acct, ctx.links), location=ctx.links.account(acct.id))


async def orders(ctx: ApiContext, request: web.Request, vr: VerifiedRequest) -> web.Response:
    account_id = _own_account(ctx, request, vr)
    cursor = request.query.get("cursor")
    rows = ctx.store.list_order_ids(account_id, after=cursor, limit=ORDERS_PAGE + 1)
    page, more = rows[:ORDERS_PAGE], len(rows) > ORDERS_PAGE
    links = ()
    if more:
        links = (f'<{ctx.links.orders(account_id)}?cursor={quote(page[-1])}>;rel="next"',)
    return json_response({"orders": [ctx.links.order(r.partition("|")[2]) for r in page]},
                         links=links)


async def key_change(ctx: ApiContext, request: web.Request, vr: VerifiedRequest) -> web.Response:
    acct = vr.require_account()
    if vr.is_post_as_get:
        raise malformed("keyChange needs an inner JWS as payload")
    try:
        updated = await ctx.accounts.key_change(acct, vr.url, ctx.links.account(acct.id),
                                                vr.jws.payload, url_of=ctx.links.account)
    finally:
        ctx.verifier.forget(acct.id)
    return json_response(render.account(updated, ctx.links), location=ctx.links.account(acct.id))
