"""`nodetrust-server`: argv -> config -> CA -> HTTPS ACME server."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from server.admin.app import create_admin_app
from server.api.bootstrap import bootstrap_tls_context, create_bootstrap_app
from server.api.context import API
from server.app import create_app, open_ca
from server.ca import CAError
from server.config import DEFAULT_CONFIG, ConfigError, ServerConfig, load_config
from server.va.attest.chains import TrustLoadError

log = logging.getLogger("nodetrust.server")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nodetrust-server",
                                description="nodetrust ACME server (RFC 8555) over HTTPS")
    p.add_argument("--config", type=Path, default=None,
                   help=f"TOML configuration (default {DEFAULT_CONFIG})")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where the CA, the database and the server's TLS key live")
    p.add_argument("--listen", default=None, metavar="HOST:PORT", help="address to serve HTTPS on")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p.parse_args(argv)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop (a dependency, shared with the gateway's data path); the standard loop if it
    is missing. On bench-enroll the difference was within run-to-run noise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def tls_context(cfg: ServerConfig, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        cfg = load_config(args.config).with_overrides(data_dir=args.data_dir, listen=args.listen)
        cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca = open_ca(cfg)
        admin_host = {cfg.admin.listen[0]} if cfg.admin.listen else set()
        cert, key = ca.server_certificate(
            sorted(set(cfg.tls_names) | {cfg.listen_host} | admin_host), cfg.data_dir / "tls")
    except (ConfigError, CAError) as exc:
        print(f"nodetrust-server: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"nodetrust-server: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        app = create_app(cfg, ca=ca)
    except TrustLoadError as exc:
        print(f"nodetrust-server: manufacturer roots: {exc}", file=sys.stderr)
        return 2
    try:
        run(serve(cfg, app, ca.root_path, cert, key), new_event_loop)
    except OSError as exc:
        print(f"nodetrust-server: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # e.g. an empty admin.token
        print(f"nodetrust-server: {exc}", file=sys.stderr)
        return 2
    log.info("stopped")
    return 0


def run(main_coro: Any, loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main_coro)


async def serve(cfg: ServerConfig, app: web.Application, root_path: Path, cert: Path,
                key: Path) -> None:
    """The ACME listener, and the bootstrap mTLS and admin listeners when configured, until
    SIGTERM or SIGINT. SIGHUP re-reads the manufacturer roots; a bad file keeps the old ones."""
    ctx = app[API]
    runners = [web.AppRunner(app, access_log=None, shutdown_timeout=5)]
    await runners[0].setup()
    if cfg.admin.listen:  # up before the ACME port answers: a live directory means all is up
        host, port = cfg.admin.listen
        admin = web.AppRunner(create_admin_app(app), access_log=None, shutdown_timeout=5)
        await admin.setup()
        runners.append(admin)
        await web.TCPSite(admin, host, port, ssl_context=tls_context(cfg, cert, key)).start()
        log.info("admin API, /metrics and dashboard: https://%s:%d/admin/ (token: %s)", host,
                 port, cfg.admin_token_path)
    await web.TCPSite(runners[0], cfg.listen_host, cfg.listen_port,
                      ssl_context=tls_context(cfg, cert, key)).start()
    log.info("ACME directory: %s/acme/directory", cfg.url)
    log.info("CA root (trust this for the server and what it issues): %s", root_path)
    devices = ctx.orders.devices
    if cfg.attestation.bootstrap_listen and devices is not None and devices.enabled:
        host, port = cfg.attestation.bootstrap_listen
        boot = web.AppRunner(create_bootstrap_app(ctx), access_log=None, shutdown_timeout=5)
        await boot.setup()
        runners.append(boot)
        await web.TCPSite(boot, host, port, ssl_context=bootstrap_tls_context(
            cert, key, lambda: devices.trust)).start()
        log.info("bootstrap mTLS (device certificate -> EAB credentials): https://%s:%d/"
                 "bootstrap/eab", host, port)

    def reload() -> None:
        if devices is None:
            return
        try:
            devices.reload_trust()
        except TrustLoadError as exc:
            log.error("SIGHUP: manufacturer roots not reloaded, keeping the old ones: %s", exc)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        for r in reversed(runners):
            await r.cleanup()


if __name__ == "__main__":
    sys.exit(main())
