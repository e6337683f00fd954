"""Directory, nonces, certificate download, revocation, renewal information, CRL."""
from __future__ import annotations

from datetime import timedelta

from acme import messages
from aiohttp import web

from server.api.auth import VerifiedRequest
from server.api.context import ApiContext, json_response
from server.errors import AcmeProblem, malformed
from server.ra import ari

PEM_CHAIN = "application/pem-certificate-chain"


async def directory(ctx: ApiContext, request: web.Request) -> web.Response:
    links, acme = ctx.links, ctx.cfg.acme
    meta = messages.Directory.Meta(
        terms_of_service=acme.terms_of_service, website=acme.website,
        external_account_required=True if acme.eab == "required" else None,
        profiles={name: p.description for name, p in sorted(ctx.cfg.profiles.items())})
    body = messages.Directory({
        "newNonce": links.new_nonce(), "newAccount": links.new_account(),
        "newOrder": links.new_order(), "revokeCert": links.revoke_cert(),
        "keyChange": links.key_change(), "renewalInfo": links.renewal_info(), "meta": meta,
    }).to_json()
    return json_response(body)


async def new_nonce(ctx: ApiContext, request: web.Request) -> web.Response:
    # §7.2: HEAD answers 200, GET 204; the middleware adds the Replay-Nonce.
    return web.Response(status=200 if request.method == "HEAD" else 204,
                        headers={"Cache-Control": "no-store"})


async def certificate(ctx: ApiContext, request: web.Request, vr: VerifiedRequest) -> web.Response:
    acct = vr.require_account()
    if not vr.is_post_as_get:
        raise malformed("download a certificate with POST-as-GET (empty payload)")
    if request.headers.get("Accept", PEM_CHAIN).split(";")[0].strip() not in (PEM_CHAIN, "*/*", ""):
        raise AcmeProblem("malformed", f"this server serves certificates as {PEM_CHAIN} only",
                          status=406)
    cert = ctx.store.get_certificate(request.match_info["serial"])
    if cert is None or cert.account_id != acct.id:
        raise AcmeProblem("malformed", "no such certificate", status=404)
    resp = web.Response(body=cert.chain_pem.encode(), content_type=PEM_CHAIN)
    resp.headers.add("Link", f'<{ctx.links.root_certificate()}>;rel="up"')
    return resp


async def revoke_cert(ctx: ApiContext, request: web.Request, vr: VerifiedRequest) -> web.Response:
    payload = vr.payload()
    if vr.account is not None:
        await ctx.revocation.revoke_by_account(vr.account, payload)
    else:
        await ctx.revocation.revoke_by_key(vr.key, payload)
    return web.Response(status=200)


async def renewal_info(ctx: ApiContext, request: web.Request) -> web.Response:
    cert = ari.lookup(ctx.store, request.match_info["id"])
    window = ari.renewal_window(cert, ctx.orders.d.now())
    body = messages.RenewalInfo(suggested_window=messages.RenewalInfo.SuggestedWindow(
        start=window.start, end=window.end)).to_json()
    if window.explanation:
        body["explanationURL"] = ctx.links.directory()
    return json_response(body, retry_after=window.retry_after)


async def root_certificate(ctx: ApiContext, request: web.Request) -> web.Response:
    return web.Response(body=ctx.issuance.d.ca.root_pem, content_type="application/x-pem-file")


class CrlCache:
    """The CRL is re-signed when a revocation is recorded, in this process or another (keyed
    on the revocation feed's highest seq, which only grows), and every hour, so nextUpdate
    always stays about a day ahead of any copy a relying party holds."""

    def __init__(self) -> None:
        self._der = b""
        self._key: tuple[int, int] = (-1, -1)
        self._number = 0

    async def handler(self, ctx: ApiContext, request: web.Request) -> web.Response:
        now = ctx.issuance.d.now()
        key = (ctx.store.revocation_head(), int(now.timestamp() // 3600))
        if key != self._key:
            revoked = list(ctx.store.revoked_certificates())
            # RFC 5280 §5.2.3: CRL numbers only grow; milliseconds, never repeated here.
            self._number = max(self._number + 1, int(now.timestamp() * 1000))
            self._der = ctx.issuance.d.ca.crl(
                [(int(s, 16), at, reason) for s, at, reason in revoked],
                crl_number=self._number, this_update=now, next_update=now + timedelta(hours=24))
            self._key = key
        return web.Response(body=self._der, content_type="application/pkix-crl",
                            headers={"Cache-Control": "no-cache"})
