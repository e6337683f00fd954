"""Refusals and gateway errors as complete HTTP/1.1 responses with problem+json bodies (RFC 9457).

Bodies name the reason and the rule; they are rendered once per (status, reason, rule) and cached,
since a refused client tends to repeat itself and refusals must stay cheap.
"""

from __future__ import annotations

import json
from http import HTTPStatus

__all__ = ["problem_response"]

_TITLES = {
    "policy": "route policy does not allow this node",
    "no_route": "no route rule matches this request (default deny)",
    "revoked": "client certificate revoked",
    "expired": "client certificate outside its validity period",
    "stale": "revocation state is stale; refusing until the feed catches up",
    "bad_request": "malformed request",
    "headers_too_large": "request header fields too large",
    "method_not_allowed": "method not supported by the gateway",
    "upstream_unavailable": "upstream unavailable",
    "upstream_timeout": "upstream timed out",
    "request_timeout": "the client stopped sending its request",
}
_cache: dict[tuple[int, str, str, bool], bytes] = {}


def problem_response(status: int, reason: str, rule: str = "-", *, close: bool = False) -> bytes:
    key = (status, reason, rule, close)
    resp = _cache.get(key)
    if resp is None:
        body = json.dumps({
            "type": f"urn:nodetrust:gateway:{reason}",
            "title": _TITLES.get(reason, reason),
            "status": status,
            "reason": reason,
            "rule": rule,
        }).encode()
        phrase = HTTPStatus(status).phrase
        head = (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/problem+json\r\n"
                f"content-length: {len(body)}\r\n")
        if close:
            head += "connection: close\r\n"
        resp = head.encode("latin-1") + b"\r\n" + body
        if len(_cache) < 4096:  # rule names are bounded by the policy; this is a backstop
            _cache[key] = resp
    return resp
