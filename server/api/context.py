"""What the web front end works with: the RA services, the request verifier, URLs."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from server.api.auth import RequestVerifier
from server.api.links import Links
from server.config import ServerConfig
from server.ra.accounts import AccountService
from server.ra.issuance import IssuanceService
from server.ra.orders import OrderService
from server.ra.revocation import RevocationService
from server.ratelimit import RateLimiter
from server.store.repo import Store


@dataclass
class ApiContext:
    cfg: ServerConfig
    links: Links
    store: Store
    verifier: RequestVerifier
    accounts: AccountService
    orders: OrderService
    issuance: IssuanceService
    revocation: RevocationService
    new_account_limit: RateLimiter
    new_order_limit: RateLimiter


API = web.AppKey("api", ApiContext)


def json_response(body: Any, *, status: int = 200, location: str | None = None,
                  retry_after: int | None = None, links: tuple[str, ...] = ()) -> web.Response:
    resp = web.Response(status=status, text=json.dumps(body), content_type="application/json")
    if location:
        resp.headers["Location"] = location
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    for link in links:
        resp.headers.add("Link", link)
    return resp
