"""`nodetrust-gateway`: argv -> config -> TLS -> listener(s) on uvloop.

One worker (default) serves everything in this process. With `workers = N`, this process becomes
a supervisor: it starts N worker processes that share the port (SO_REUSEPORT), serves metrics
for all of them from a shared counter block, forwards SIGHUP and stops them on SIGTERM/SIGINT.
Each worker follows the revocation feed itself, so each fails closed on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

import uvloop
from aiohttp import web

from gateway.accesslog import AccessLog
from gateway.authz import Authorizer, Policy, PolicyError, load_policy
from gateway.config import DEFAULT_CONFIG, ConfigError, GatewayConfig, load_config
from gateway.metrics import Metrics, SharedBlock, create_metrics_app
from gateway.reload import PolicyReloader
from gateway.revocation import FeedClient, RevocationState
from gateway.server import Gateway
from gateway.tls import CertificateReloader, TLSConfigError, server_context

log = logging.getLogger("nodetrust.gateway")
STARTUP_WAIT = 30.0  # how long to wait for files nodetrust-server creates on its first start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nodetrust-gateway",
                                description="nodetrust mTLS gateway: checks the node behind "
                                            "every request, then proxies it")
    p.add_argument("--config", type=Path, default=None,
                   help=f"TOML configuration (default {DEFAULT_CONFIG})")
    p.add_argument("--listen", default=None, metavar="HOST:PORT", help="address to serve on")
    p.add_argument("--upstream", default=None, metavar="URL", help="http://HOST:PORT to proxy to")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    # Internal: how the supervisor starts its workers.
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--metrics-file", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _wait_for_files(cfg: GatewayConfig, deadline: float) -> None:
    """On a first start the server may still be creating its CA, TLS key and feed token."""
    files = [cfg.client_ca, cfg.cert, cfg.key, cfg.token_file]
    announced = False
    while missing := [f for f in files if not f.exists()]:
        if time.monotonic() >= deadline:
            raise ConfigError(str(cfg.source), "", f"{missing[0]}: not found (start "
                              "nodetrust-server once to create it, or set the path in conf)")
        if not announced:
            log.info("waiting for %s (created by nodetrust-server)", missing[0])
            announced = True
        time.sleep(0.2)  # start-up only, before any loop exists


def _prepare(args: argparse.Namespace) -> tuple[GatewayConfig, Policy, str]:
    cfg = load_config(args.config).with_overrides(listen=args.listen, upstream=args.upstream)
    policy = load_policy(cfg.policy_file, policy_only=cfg.policy_file != cfg.source)
    if cfg.workers > 1 and cfg.listen_port == 0:
        raise ConfigError(str(cfg.source), "gateway.workers", "several workers need a fixed port")
    _wait_for_files(cfg, time.monotonic() + STARTUP_WAIT)
    token = cfg.token_file.read_text(encoding="utf-8").strip()
    server_context(cfg.cert, cfg.key, cfg.client_ca)  # fail here, with the file's name
    return cfg, policy, token


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        cfg, policy, token = _prepare(args)
    except (ConfigError, PolicyError, TLSConfigError) as e:
        print(f"nodetrust-gateway: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"nodetrust-gateway: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    try:
        rc: int
        if args.worker_index is not None:
            block = SharedBlock(cfg.workers, args.metrics_file, create=False)
            rc = uvloop.run(_worker(cfg, policy, token, block, args.worker_index, False))
        elif cfg.workers == 1:
            rc = uvloop.run(_worker(cfg, policy, token, SharedBlock(1), 0, True))
        else:
            rc = uvloop.run(_supervise(cfg, args))
        return rc
    except KeyboardInterrupt:
        return 0


async def _serve_metrics(cfg: GatewayConfig, block: SharedBlock) -> web.AppRunner | None:
    if cfg.metrics_listen is None:
        return None
    runner = web.AppRunner(create_metrics_app(block), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, *cfg.metrics_listen).start()
    log.info("metrics on http://%s:%d/metrics, health on /healthz", *cfg.metrics_listen)
    return runner


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _worker(cfg: GatewayConfig, policy: Policy, token: str, block: SharedBlock,
                  index: int, metrics_here: bool) -> int:
    ctx = server_context(cfg.cert, cfg.key, cfg.client_ca)
    state = RevocationState(cfg.max_staleness)
    authz = Authorizer(policy)
    metrics = Metrics(block, index)
    access_log = AccessLog(cfg.access_log)
    gw = Gateway(cfg, authz=authz, revocation=state, metrics=metrics, access_log=access_log)
    try:
        await gw.start(ctx, reuse_port=cfg.workers > 1)
        runner = await _serve_metrics(cfg, block) if metrics_here else None
    except OSError as e:
        print(f"nodetrust-gateway: cannot listen: {e.strerror or e}", file=sys.stderr)
        return 1
    feed = FeedClient(state, feed_url=cfg.feed_url, token=token, ca_file=cfg.feed_ca,
                      on_labels=authz.set_node_labels)
    feed_task = asyncio.create_task(feed.run(), name="revocation-feed")
    reloader = PolicyReloader(cfg.policy_file, authz, metrics,
                              policy_only=cfg.policy_file != cfg.source,
                              certs=CertificateReloader(ctx, cfg.cert, cfg.key))
    reloader.start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: reloader.check(force=True))
    stop = _stop_event()
    log.info("worker %d: https://%s:%d -> http://%s:%d (%d rules; refusing with 503 until the "
             "revocation feed answers)", index, cfg.listen_host, gw.port, cfg.upstream_host,
             cfg.upstream_port, len(policy.rules))
    await stop.wait()
    log.info("worker %d: stopping", index)
    reloader.stop()
    await gw.stop()
    feed_task.cancel()
    await asyncio.gather(feed_task, return_exceptions=True)
    if runner is not None:
        await runner.cleanup()
    access_log.close()
    return 0


async def _supervise(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    block = SharedBlock.create_file(cfg.workers)
    argv = [sys.executable, "-m", "gateway.main", "--config", str(cfg.source),
            "--log-level", args.log_level, "--metrics-file", str(block.path)]
    argv += ["--listen", f"{cfg.listen_host}:{cfg.listen_port}"]
    argv += ["--upstream", f"http://{cfg.upstream_host}:{cfg.upstream_port}"]
    procs: dict[int, asyncio.subprocess.Process] = {}
    stop = _stop_event()
    loop = asyncio.get_running_loop()

    def forward(sig: int) -> None:
        for p in procs.values():
            if p.returncode is None:
                p.send_signal(sig)

    loop.add_signal_handler(signal.SIGHUP, forward, signal.SIGHUP)
    runner = await _serve_metrics(cfg, block)
    rc = 0

    async def spawn(i: int) -> None:
        procs[i] = await asyncio.create_subprocess_exec(*argv, "--worker-index", str(i))

    try:
        await asyncio.gather(*(spawn(i) for i in range(cfg.workers)))
        log.info("supervising %d workers on %s:%d", cfg.workers, cfg.listen_host, cfg.listen_port)
        while not stop.is_set():
            waits = {asyncio.ensure_future(p.wait()): i for i, p in procs.items()}
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait([*waits, stopper], return_when=asyncio.FIRST_COMPLETED)
            for fut in waits:
                fut.cancel()
            stopper.cancel()
            for fut in done:
                if fut in waits and not stop.is_set():
                    i = waits[fut]
                    code = procs[i].returncode
                    # A worker that fails at start (bad port, ...) fails them all: stop.
                    log.error("worker %d exited with %s; stopping", i, code)
                    rc = 1
                    stop.set()
    finally:
        forward(signal.SIGTERM)
        await asyncio.gather(*(p.wait() for p in procs.values()), return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        block.close(unlink=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
