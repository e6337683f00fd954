"""The JWS request pipeline: every ACME POST passes here before a handler sees it.

Each route declares how it is authenticated (`jwk`, `kid` or `any`); handlers receive a
`VerifiedRequest` and never look at the raw body.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from yarl import URL

from server.api.links import Links
from server.api.nonces import NonceStore
from server.errors import AcmeProblem, malformed, unauthorized
from server.jws import (ParsedJWS, PublicKey, key_from_jwk, parse_jws, payload_json,
                        verify_signature)
from server.models import Account, Status
from server.store.repo import Store

JOSE_CONTENT_TYPE = "application/jose+json"
# Changes made through this process are seen at once (forget()); the TTL bounds how long a
# change made elsewhere (another server process on the same database) can go unseen.
ACCOUNT_CACHE_SECONDS = 2.0


@dataclass(frozen=True)
class VerifiedRequest:
    url: str
    jws: ParsedJWS
    key: PublicKey
    account: Account | None  # set for kid-signed requests
    jwk: dict[str, Any] | None  # set for jwk-signed requests

    @property
    def is_post_as_get(self) -> bool:
        return self.jws.payload == b""

    def payload(self) -> dict[str, Any]:
        if self.is_post_as_get:
            raise malformed("this request needs a JSON payload, not POST-as-GET")
        return payload_json(self.jws)

    def require_account(self) -> Account:
        if self.account is None:
            raise malformed("this request must be signed with the account key (kid)")
        return self.account


def _same_url(signed: Any, requested: str) -> bool:
    if not isinstance(signed, str):
        return False
    if signed == requested:  # what every client sends; normalizing costs two URL parses
        return True
    try:
        return URL(signed) == URL(requested)
    except (ValueError, TypeError):
        return False


class RequestVerifier:
    def __init__(self, store: Store, nonces: NonceStore, links: Links, *,
                 key_cache_size: int = 10_000) -> None:
        self.store, self.nonces, self.links = store, nonces, links
        # account id -> (account, key, fresh until): every request is signed by an account,
        # and reading it plus parsing its JWK cost more than verifying the signature.
        self._accounts: OrderedDict[str, tuple[Account, PublicKey, float]] = OrderedDict()
        self._key_cache_size = key_cache_size

    async def verify(self, request: web.Request, mode: str) -> VerifiedRequest:
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != JOSE_CONTENT_TYPE:
            raise AcmeProblem("malformed", f"Content-Type must be {JOSE_CONTENT_TYPE}", status=415)
        jws = parse_jws(await request.read())
        prot = jws.protected
        has_jwk, has_kid = "jwk" in prot, "kid" in prot
        if has_jwk == has_kid:
            raise malformed("the JWS protected header must carry exactly one of jwk and kid")
        if mode == "jwk" and not has_jwk:
            raise malformed("this resource must be signed with the key itself (jwk), not kid")
        if mode == "kid" and not has_kid:
            raise malformed("this resource must be signed by an account (kid), not jwk")

        account: Account | None = None
        jwk: dict[str, Any] | None = None
        if has_jwk:
            jwk = prot["jwk"]
            key = key_from_jwk(jwk)
        else:
            account, key = self._account_key(prot["kid"])
        verify_signature(jws, key)

        nonce = prot.get("nonce")
        if not isinstance(nonce, str) or not self.nonces.redeem(nonce):
            raise AcmeProblem("badNonce", "the nonce is missing, used or expired; "
                              "retry with the Replay-Nonce of this response")
        # Compare RFC 3986-normalized forms of the raw request target: `path_qs` is
        # *decoded*, so a signed URL with an escaped query (the orders list's next link,
        # `?cursor=...%7C...`) never matched, and clients may re-escape %3A as ':' on the wire.
        url = self.links.base + request.rel_url.raw_path_qs
        if not _same_url(prot.get("url"), url):
            raise unauthorized(f"the JWS url header {prot.get('url')!r} does not match the request "
                               f"URL {url!r}")
        return VerifiedRequest(url=url, jws=jws, key=key, account=account, jwk=jwk)

    def _account_key(self, kid: Any) -> tuple[Account, PublicKey]:
        account_id = self.links.account_id_from_url(kid) if isinstance(kid, str) else None
        now = time.monotonic()
        cached = self._accounts.get(account_id) if account_id else None
        if cached is None or cached[2] <= now:
            account = self.store.get_account(account_id) if account_id else None
            if account is None:
                raise AcmeProblem("accountDoesNotExist", f"no account at {kid!r}", status=400)
            key = (cached[1] if cached is not None and cached[0].thumbprint == account.thumbprint
                   else key_from_jwk(account.jwk))
            cached = (account, key, now + ACCOUNT_CACHE_SECONDS)
            self._accounts[account.id] = cached
            while len(self._accounts) > self._key_cache_size:
                self._accounts.popitem(last=False)
        account, key, _ = cached
        if account.status != Status.VALID:
            raise unauthorized(f"the account is {account.status}")
        return account, key

    def forget(self, account_id: str) -> None:
        """Drop a cached account after this process changed it (update, key change)."""
        self._accounts.pop(account_id, None)
