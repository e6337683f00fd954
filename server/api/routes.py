"""The route table. Every POST route declares its authentication: `jwk` (the key signs
for itself), `kid` (an account signs) or `any` (revokeCert accepts both)."""
from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

from server.api import handlers_accounts as accounts
from server.api import handlers_certs as certs
from server.api import handlers_feed as feed
from server.api import handlers_orders as orders
from server.api.auth import VerifiedRequest
from server.api.context import API, ApiContext
from server.api.links import PREFIX

PostHandler = Callable[[ApiContext, web.Request, VerifiedRequest], Awaitable[web.StreamResponse]]
GetHandler = Callable[[ApiContext, web.Request], Awaitable[web.StreamResponse]]

POSTS: list[tuple[str, PostHandler, str]] = [
    ("/new-account", accounts.new_account, "jwk"),
    ("/acct/{id}", accounts.account, "kid"),
    ("/acct/{id}/orders", accounts.orders, "kid"),
    ("/key-change", accounts.key_change, "kid"),
    ("/new-order", orders.new_order, "kid"),
    ("/order/{id}", orders.order, "kid"),
    ("/order/{id}/finalize", orders.finalize, "kid"),
    ("/authz/{id}", orders.authz, "kid"),
    ("/chall/{id}", orders.challenge, "kid"),
    ("/cert/{serial}", certs.certificate, "kid"),
    ("/revoke-cert", certs.revoke_cert, "any"),
]


def _post(handler: PostHandler, auth: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def view(request: web.Request) -> web.StreamResponse:
        ctx = request.app[API]
        verified = await ctx.verifier.verify(request, auth)
        return await handler(ctx, request, verified)
    view.__name__ = handler.__name__
    return view


def _get(handler: GetHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def view(request: web.Request) -> web.StreamResponse:
        return await handler(request.app[API], request)
    view.__name__ = handler.__name__
    return view


def add_routes(app: web.Application) -> None:
    r = app.router
    for path, handler, auth in POSTS:
        r.add_post(PREFIX + path, _post(handler, auth))
    r.add_get(PREFIX + "/directory", _get(certs.directory))
    r.add_route("HEAD", PREFIX + "/new-nonce", _get(certs.new_nonce))
    r.add_get(PREFIX + "/new-nonce", _get(certs.new_nonce), allow_head=False)
    r.add_get(PREFIX + "/renewal-info/{id}", _get(certs.renewal_info))
    r.add_get(PREFIX + "/root", _get(certs.root_certificate))
    r.add_get("/crl/intermediate.crl", _get(certs.CrlCache().handler))
    r.add_get("/feed/revocations", feed.revocations, allow_head=False)
    r.add_get("/feed/labels", feed.labels, allow_head=False)
