"""Who may use the admin listener.

One secret: the bearer token in `<data-dir>/admin.token` (32 random bytes, made 0600 on
first start; whoever can read the data dir is an operator already). Every API call and
/metrics presents it as `Authorization: Bearer <token>`; it is compared with
`hmac.compare_digest`, so the time taken does not depend on where a guess goes wrong.

The dashboard trades the token once, at /admin/login, for a session cookie: the expiry
plus an HMAC of it keyed with the token (so rotating the token ends every session, and the
server keeps no session state). The cookie is HttpOnly (no script can read it), Secure,
SameSite=Strict (no other site can make the browser send it) and scoped to /admin/. It
opens the read-only dashboard pages only: every change needs the bearer token, so a
cookie can never be ridden into a mutation (no CSRF surface).

Operator client certificates are not accepted: the nodetrust CA issues every node's
certificate too, so "issued by the CA" alone would make each node an operator.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from aiohttp import web

from server.feed import load_or_create_token

COOKIE = "nodetrust_admin"
COOKIE_PATH = "/admin/"


class Unauthorized(Exception):
    """No valid token (401) — the middleware answers with a problem, or the login page."""


@dataclass(frozen=True)
class Operator:
    """Who is acting, for audit records: how they proved it."""

    via: str  # "token" | "session"

    @property
    def actor(self) -> str:
        return f"admin:{self.via}"


class AdminAuth:
    def __init__(self, token: str, session_ttl: timedelta) -> None:
        self._token = token.encode()
        self.session_ttl = session_ttl

    @classmethod
    def from_file(cls, path: Path, session_ttl: timedelta) -> AdminAuth:
        return cls(load_or_create_token(path), session_ttl)

    def token_ok(self, presented: str) -> bool:
        return hmac.compare_digest(presented.strip().encode(), self._token)

    def bearer(self, request: web.Request) -> Operator:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self.token_ok(presented):
            raise Unauthorized("the admin API needs `Authorization: Bearer <token>` with the "
                               "token from the server's <data-dir>/admin.token")
        return Operator("token")

    def reader(self, request: web.Request) -> Operator:
        """Read-only pages: the bearer token or a dashboard session cookie."""
        if "Authorization" in request.headers:
            return self.bearer(request)
        if self.session_ok(request.cookies.get(COOKIE, "")):
            return Operator("session")
        raise Unauthorized("log in at /admin/login with the admin token")

    # -- the dashboard session ---------------------------------------------------------------
    def _mac(self, expires: str) -> str:
        return hmac.new(self._token, b"admin-session:" + expires.encode(),
                        hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        expires = str(int(time.time() + self.session_ttl.total_seconds()))
        return f"{expires}.{self._mac(expires)}"

    def session_ok(self, value: str) -> bool:
        expires, _, mac = value.partition(".")
        if not expires.isdigit() or not mac:
            return False
        return hmac.compare_digest(mac.encode(), self._mac(expires).encode()) \
            and int(expires) > time.time()

    def set_cookie(self, resp: web.StreamResponse) -> None:
        resp.set_cookie(COOKIE, self.new_session(), path=COOKIE_PATH, secure=True,
                        httponly=True, samesite="Strict",
                        max_age=int(self.session_ttl.total_seconds()))

    @staticmethod
    def clear_cookie(resp: web.StreamResponse) -> None:
        resp.del_cookie(COOKIE, path=COOKIE_PATH, secure=True, httponly=True, samesite="Strict")
