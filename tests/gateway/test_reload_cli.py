"""Policy reload (SIGHUP, file change, bad file), metrics/health, and the CLI process."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from support.gateway_harness import TRUST_DOMAIN, Client, ClientCert, Harness, Pki, free_port

from gateway.authz import load_policy
from gateway.metrics import Metrics, create_metrics_app
from gateway.reload import PolicyReloader

OPEN = f"""
[[routes]]
name = "everyone"
prefix = "/"
allow_spiffe = ["spiffe://{TRUST_DOMAIN}/node/*"]
"""
CLOSED = """
[[routes]]
name = "lockdown"
prefix = "/"
allow_dns = ["nobody.invalid"]
"""


def _write(path: Path, text: str, stamp: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(stamp, stamp))  # distinct mtimes, whatever the filesystem's resolution


async def test_policy_reloads_on_sighup_and_on_change_without_dropping_connections(
        gateway: Harness, node: ClientCert, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    _write(policy, OPEN, 1_000_000_000)
    gateway.authz.set_policy(load_policy(policy, policy_only=True))
    reloader = PolicyReloader(policy, gateway.authz, Metrics(gateway.block), policy_only=True)
    c = Client(gateway, node)
    assert (await c.get("/echo")).status == 200
    port = c.last_port

    # SIGHUP: the same handler main() installs.
    reloaded = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: (reloader.check(force=True), reloaded.set()))
    try:
        _write(policy, CLOSED, 2_000_000_000)
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(reloaded.wait(), 30)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
    r = await c.get("/echo")
    assert r.status == 403 and r.json()["rule"] == "lockdown"
    assert c.last_port == port  # same connection, new policy

    # File change, picked up by the once-a-second poll (called directly here).
    _write(policy, OPEN, 3_000_000_000)
    assert reloader.check() is True
    assert reloader.check() is False  # unchanged file: nothing to do
    r = await c.get("/echo")
    assert r.status == 200 and c.last_port == port

    # A broken file keeps the policy that works, and says so in metrics.
    _write(policy, OPEN + "\n[[routes]]\nname = 'x'\nprefx = '/'\n", 4_000_000_000)
    assert reloader.check() is False
    assert (await c.get("/echo")).status == 200
    _write(policy, "this is not toml = = =", 5_000_000_000)
    assert reloader.check() is False
    assert (await c.get("/echo")).status == 200
    assert gateway.block.total("reload_error") == 2 and gateway.block.total("reload_ok") == 2
    c.close()


async def test_metrics_and_health(gateway: Harness, node: ClientCert, pki: Pki) -> None:
    c = Client(gateway, node)
    assert (await c.get("/echo")).status == 200
    assert (await c.get("/admin")).status == 403
    c.close()
    gateway.gw.tick()
    async with TestClient(TestServer(create_metrics_app(gateway.block))) as mc:
        text = await (await mc.get("/metrics")).text()
        assert 'nodetrust_gateway_requests_total{decision="allow"} 1' in text
        assert 'nodetrust_gateway_requests_total{decision="refuse"} 1' in text
        assert 'nodetrust_gateway_refusals_total{reason="policy"} 1' in text
        assert 'nodetrust_gateway_upstream_latency_seconds_count 1' in text
        assert 'nodetrust_gateway_upstream_latency_seconds_bucket{le="+Inf"} 1' in text
        assert "nodetrust_gateway_feed_lag_seconds" in text
        resp = await mc.get("/healthz")
        assert resp.status == 200 and (await resp.json())["status"] == "ok"
        gateway.clocks.mono_offset = 1000  # feed silent: unhealthy
        gateway.gw.tick()
        resp = await mc.get("/healthz")
        assert resp.status == 503 and (await resp.json())["revocation_fresh"] == 0


# --- the CLI --------------------------------------------------------------------------------------

def _gateway(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.main", *args]


def test_bad_config_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    conf = tmp_path / "gw.toml"
    conf.write_text('[gateway]\nlisten = "127.0.0.1:99999"\n')
    out = subprocess.run(_gateway("--config", str(conf)), capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 2
    assert "gateway.listen" in out.stderr and "HOST:PORT" in out.stderr
    conf.write_text('[gateway]\nlisten = "127.0.0.1:8443"\n[[routes]]\nname = "a"\nglob = "x"\n')
    out = subprocess.run(_gateway("--config", str(conf)), capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 2 and "routes[0] (a).glob" in out.stderr
    out = subprocess.run(_gateway("--config", str(tmp_path / "missing.toml")),
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "file not found" in out.stderr


@pytest.mark.parametrize("workers", [1, 2])
async def test_cli_serves_and_stops_cleanly_on_sigterm(
        tmp_path: Path, pki: Pki, server_tls: tuple[Path, Path], node: ClientCert,
        workers: int) -> None:
    port, metrics = free_port(), free_port()
    token = tmp_path / "feed.token"
    token.write_text("test-token\n")
    conf = tmp_path / "gw.toml"
    conf.write_text(f"""
[gateway]
listen = "127.0.0.1:{port}"
upstream = "http://127.0.0.1:{free_port()}"
workers = {workers}
cert = "{server_tls[0]}"
key = "{server_tls[1]}"
client_ca = "{pki.root_pem}"
access_log = "access.log"
[metrics]
listen = "127.0.0.1:{metrics}"
[revocation]
feed_url = "https://127.0.0.1:{free_port()}/feed/revocations"
token_file = "feed.token"
ca_file = "{pki.root_pem}"
{OPEN}""")
    proc = await asyncio.create_subprocess_exec(
        *_gateway("--config", str(conf)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    drain: asyncio.Task[bytes] | None = None
    try:
        ready = 0
        while ready < workers:  # wait on the condition: every worker says it is serving
            line = (await proc.stderr.readline()).decode()
            assert line, "gateway exited before serving"
            ready += f":{port} -> http://" in line
        # Keep draining its log (the unreachable feed keeps it talking) so it never blocks.
        drain = asyncio.create_task(proc.stderr.read())
        # No feed is reachable, so the gateway fails closed: 503 stale, from a live listener.
        c = Client(port, None, ctx=node.context(pki.root_pem))
        r = await c.get("/echo")
        assert r.status == 503 and r.json()["reason"] == "stale"
        c.close()
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{metrics}/healthz") as resp:
                assert resp.status == 503
                assert (await resp.json())["workers"] == workers
            async with s.get(f"http://127.0.0.1:{metrics}/metrics") as resp:
                assert 'nodetrust_gateway_refusals_total{reason="stale"} 1' in await resp.text()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        assert (tmp_path / "access.log").read_text().count('"status":503') == 1
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if drain is not None:
            await drain
