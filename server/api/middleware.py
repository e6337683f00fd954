"""The single place where errors become RFC 7807 problem documents, and where every ACME
response gets its Replay-Nonce and index link."""
from __future__ import annotations

import json
import logging
from typing import Awaitable, Callable

from aiohttp import web

from server.api.links import Links
from server.api.nonces import NonceStore
from server.errors import AcmeProblem
from server.ratelimit import RateLimiter

log = logging.getLogger("nodetrust.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_response(p: AcmeProblem) -> web.Response:
    resp = web.Response(status=p.status, text=json.dumps(p.to_json()),
                        content_type=PROBLEM_CONTENT_TYPE)
    for k, v in p.headers.items():
        resp.headers[k] = v
    return resp


def _from_http_error(exc: web.HTTPException) -> AcmeProblem:
    if exc.status == 413:
        return AcmeProblem("malformed", "request body is too large", status=413)
    if exc.status == 405:
        # RFC 9110 §15.5.6: a 405 must say which methods are allowed (was dropped here).
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return AcmeProblem("malformed", f"method not allowed: {exc.reason}", status=405,
                           headers=allow)
    if exc.status == 404:
        return AcmeProblem("malformed", "no such resource", status=404)
    return AcmeProblem("malformed", exc.reason or "bad request", status=exc.status)


def make_acme_middleware(nonces: NonceStore, links: Links,
                         per_ip: RateLimiter) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    index = f'<{links.directory()}>;rel="index"'

    @web.middleware
    async def acme_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            per_ip.check(request.remote or "?")
            resp = await handler(request)
        except AcmeProblem as p:
            resp = problem_response(p)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            resp = problem_response(_from_http_error(exc))
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            resp = problem_response(AcmeProblem("serverInternal", "internal server error; "
                                                "the operator can find details in the server log"))
        if request.path.startswith("/acme/"):
            resp.headers["Replay-Nonce"] = nonces.issue()
            resp.headers.add("Link", index)
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    return acme_middleware
