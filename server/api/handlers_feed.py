"""GET /feed/revocations?since=N&wait=S: the gateways' incremental revocation feed.

Answers at once when there are events beyond `since` (at most one page); otherwise holds
the request up to min(wait, feed.max_wait) seconds and answers as soon as one is recorded.
Bearer-token authenticated; errors are problem documents like everywhere else.
"""
from __future__ import annotations

import math

from aiohttp import web

from server.api.context import json_response
from server.errors import malformed
from server.feed import RevocationFeed

FEED = web.AppKey("revocation_feed", RevocationFeed)


def _param(request: web.Request, name: str, default: float, *, integer: bool) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise malformed(f"{name}: expected a {'whole' if integer else ''} number, "
                        f"got {raw!r}") from None
    if value < 0 or not math.isfinite(value):
        raise malformed(f"{name}: must be a non-negative number, got {raw!r}")
    return value


async def revocations(request: web.Request) -> web.Response:
    feed = request.app[FEED]
    feed.check_authorization(request.headers.get("Authorization"))
    since = int(_param(request, "since", 0, integer=True))
    wait = _param(request, "wait", 0.0, integer=False)
    page = feed.page(since)
    if not page.events and wait > 0:
        await feed.wait_for_change(since, wait)
        page = feed.page(since)
    body = page.to_json()
    # Gateways re-fetch /feed/labels when this changes (route groups by node label).
    body["labels_version"] = feed.store.labels_version()
    resp = json_response(body)
    resp.headers["Cache-Control"] = "no-store"
    return resp


async def labels(request: web.Request) -> web.Response:
    """GET /feed/labels: node id -> ["key=value", ...] for active nodes, for route policy."""
    feed = request.app[FEED]
    feed.check_authorization(request.headers.get("Authorization"))
    resp = json_response({"version": feed.store.labels_version(),
                          "labels": feed.store.node_labels()})
    resp.headers["Cache-Control"] = "no-store"
    return resp
