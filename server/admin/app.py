"""The admin listener's application: JSON admin API, Prometheus /metrics and the operator
dashboard, on its own HTTPS port (`[admin] listen`), sharing the ACME app's store, clock,
telemetry and revocation feed. It never holds the CA key and never closes the store (the
ACME app owns both)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from typing import Awaitable, Callable

from aiohttp import web

from server.admin.auth import AdminAuth, Unauthorized
from server.api.handlers_feed import FEED
from server.app import DEPS
from server.config import ServerConfig
from server.feed import RevocationFeed
from server.ops import OpsError
from server.store.repo import Store
from server.telemetry import Telemetry

log = logging.getLogger("nodetrust.admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class AdminContext:
    cfg: ServerConfig
    store: Store
    now: Callable[[], datetime]
    telemetry: Telemetry
    feed: RevocationFeed
    auth: AdminAuth


ADMIN = web.AppKey("admin", AdminContext)


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
            "detail": detail}
    return web.Response(status=status, text=json.dumps(body), headers=headers,
                        content_type="application/problem+json")


@web.middleware
async def admin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place admin errors become responses; every answer gets the same
    no-cache, no-sniff, no-framing headers."""
    try:
        resp = await handler(request)
    except Unauthorized as exc:
        resp = problem(401, str(exc), {"WWW-Authenticate": 'Bearer realm="nodetrust-admin"'})
    except OpsError as exc:
        resp = problem(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = problem(exc.status, exc.reason or HTTPStatus(exc.status).phrase)
        if "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        log.exception("admin: internal error on %s %s", request.method, request.path)
        resp = problem(500, "internal error; see the server log")
    resp.headers.setdefault("Cache-Control", "no-store")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


def create_admin_app(main: web.Application) -> web.Application:
    """The admin app for a running ACME app (`server.app.create_app`). Makes
    <data-dir>/admin.token (0600) on first start."""
    from server.admin import api, dashboard, metrics  # they import ADMIN from here

    deps = main[DEPS]
    cfg = deps.cfg
    ctx = AdminContext(cfg=cfg, store=deps.store, now=deps.now, telemetry=deps.telemetry,
                       feed=main[FEED],
                       auth=AdminAuth.from_file(cfg.admin_token_path, cfg.admin.session_ttl))
    app = web.Application(middlewares=[admin_middleware], client_max_size=64 * 1024)
    app[ADMIN] = ctx
    api.add_routes(app)
    metrics.add_routes(app)
    dashboard.add_routes(app)
    return app
