"""The application factory: config in, a ready aiohttp app out; no globals."""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from aiohttp import web

from server.api.auth import RequestVerifier
from server.api.context import API, ApiContext
from server.api.handlers_feed import FEED
from server.api.links import Links
from server.api.middleware import make_acme_middleware
from server.api.nonces import NonceStore
from server.api.routes import add_routes
from server.ca import CertificateAuthority
from server.config import ServerConfig
from server.feed import RevocationFeed, load_or_create_token
from server.ra.accounts import AccountService
from server.ra.deps import Deps, utcnow
from server.ra.devices import DeviceService
from server.ra.issuance import IssuanceService
from server.ra.orders import OrderService
from server.ra.revocation import RevocationService
from server.ratelimit import RateLimiter
from server.store.repo import Store
from server.va.registry import ChallengeValidators

log = logging.getLogger("nodetrust.server")

# The RA's dependencies (store, CA, clock, telemetry): the admin listener works with them.
DEPS = web.AppKey("deps", Deps)


def open_ca(cfg: ServerConfig) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(cfg.ca_dir, key_type=cfg.ca_key_type,
                                               common_name=cfg.ca_common_name)


def create_app(cfg: ServerConfig, *, ca: CertificateAuthority | None = None,
               deps: Deps | None = None) -> web.Application:
    ca = ca or open_ca(cfg)
    store = deps.store if deps else Store(cfg.db_path, synchronous=cfg.store_synchronous,
                                          audit_mirror=cfg.audit.mirror_file)
    deps = deps or Deps(cfg=cfg, store=store, ca=ca, now=utcnow)
    links = Links(cfg.url)
    nonces = NonceStore(ttl=cfg.acme.nonce_ttl.total_seconds(), max_nonces=cfg.acme.max_nonces)
    validators = ChallengeValidators(cfg.validation)
    devices = DeviceService(deps)
    orders = OrderService(deps, validators, devices)
    issuance = IssuanceService(deps, crl_url=links.crl(), devices=devices)
    ctx = ApiContext(
        cfg=cfg, links=links, store=store, verifier=RequestVerifier(store, nonces, links),
        accounts=AccountService(deps), orders=orders, issuance=issuance,
        revocation=RevocationService(deps),
        new_account_limit=RateLimiter("rate_limits.new_account_per_ip",
                                      cfg.rate_limits.new_account_per_ip),
        new_order_limit=RateLimiter("rate_limits.new_order_per_account",
                                    cfg.rate_limits.new_order_per_account),
    )
    per_ip = RateLimiter("rate_limits.requests_per_ip", cfg.rate_limits.requests_per_ip)
    app = web.Application(middlewares=[make_acme_middleware(nonces, links, per_ip)],
                          client_max_size=cfg.acme.max_body_bytes)
    app[API] = ctx
    app[DEPS] = deps
    feed = RevocationFeed(store, cfg.feed, token=load_or_create_token(cfg.feed_token_path),
                          now=deps.now)
    app[FEED] = feed

    async def release_feed(app: web.Application) -> None:
        await feed.close()  # on_shutdown: parked long-polls answer now, not after max_wait

    app.on_shutdown.append(release_feed)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        store.start_writer(asyncio.get_running_loop())
        feed.start()
        finished = await issuance.resume()
        resumed = await orders.resume()
        if finished or resumed:
            log.info("resumed after restart: %d order(s) finalized, %d validation(s) restarted",
                     finished, resumed)
        yield
        await feed.close()
        await orders.close()
        await validators.close()
        store.close()

    app.cleanup_ctx.append(lifecycle)
    add_routes(app)
    return app
