"""`nodetrust-server`: argv -> config -> CA -> HTTPS ACME server."""
from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys
from pathlib import Path

from aiohttp import web

from server.app import create_app, open_ca
from server.ca import CAError
from server.config import DEFAULT_CONFIG, ConfigError, ServerConfig, load_config

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
    """uvloop when installed: its C event loop and TLS transport cut the per-request cost
    (measured with scripts/bench-enroll); the standard loop otherwise."""
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
        cert, key = ca.server_certificate(
            sorted(set(cfg.tls_names) | {cfg.listen_host}), cfg.data_dir / "tls")
    except (ConfigError, CAError) as exc:
        print(f"nodetrust-server: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"nodetrust-server: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    app = create_app(cfg, ca=ca)

    async def announce(_: web.Application) -> None:
        log.info("ACME directory: %s/acme/directory", cfg.url)
        log.info("CA root (trust this for the server and what it issues): %s", ca.root_path)

    app.on_startup.append(announce)
    try:
        web.run_app(app, host=cfg.listen_host, port=cfg.listen_port,
                    ssl_context=tls_context(cfg, cert, key), print=None,
                    access_log=None, shutdown_timeout=5, loop=new_event_loop())
    except OSError as exc:
        print(f"nodetrust-server: cannot listen on {cfg.listen_host}:{cfg.listen_port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
