"""The headline: a node enrolled over ACME calls an upstream through nodetrust-gateway on
ONE keep-alive connection; once its certificate is revoked over ACME, the next request on
that same connection is refused (403, revoked) within a second, and so is a new handshake.

Real processes (nodetrust-server, nodetrust-gateway), real TLS, a real certificate.
"""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from e2e.acme_servers import NodetrustServer, free_ports, start_nodetrust, stop_process
from support.remote_acme import Enrolled, Http01Responder, RemoteAcme

pytestmark = pytest.mark.e2e

START_DEADLINE = 20.0
REFUSAL_BUDGET = 1.0  # product requirement: revocation to refusal on an open connection


class OneConnection:
    """A single TLS connection speaking HTTP/1.1 keep-alive by hand: unlike http.client it can
    never reconnect behind the test's back, so 'the same connection' is guaranteed."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")

    def get(self, path: str) -> tuple[int, bytes]:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        resp = http.client.HTTPResponse(self.sock)  # type: ignore[arg-type]
        resp.begin()
        return resp.status, resp.read()

    def close(self) -> None:
        self.sock.close()


def gateway_command(config: Path) -> list[str]:
    script = Path(sys.executable).with_name("nodetrust-gateway")
    base = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from gateway.main import main; sys.exit(main())"]
    return [*base, "--config", str(config)]


@pytest.fixture
def nodetrust(tmp_path: Path) -> Iterator[NodetrustServer]:
    with start_nodetrust(tmp_path / "server") as server:
        yield server


@pytest.fixture
async def hello_upstream() -> AsyncIterator[int]:
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello from upstream")

    app.router.add_get("/hello", hello)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    yield server.port
    await server.close()


@pytest.fixture
async def enrolled_node(nodetrust: NodetrustServer) -> AsyncIterator[tuple[Enrolled, RemoteAcme]]:
    responder = Http01Responder(port=nodetrust.http_port)
    await responder.start()
    base = nodetrust.directory_url.rsplit("/acme/", 1)[0]
    try:
        async with RemoteAcme(base, nodetrust.ca_bundle, responder) as acme:
            yield await acme.enroll("e2e-node.test"), acme
    finally:
        await responder.close()


@contextlib.contextmanager
def run_gateway(nodetrust: NodetrustServer, upstream_port: int,
                workdir: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port, metrics = free_ports(2)
    data = nodetrust.data_dir
    base = nodetrust.directory_url.rsplit("/acme/", 1)[0]
    config = workdir / "gateway.toml"
    workdir.mkdir(parents=True, exist_ok=True)
    config.write_text(f"""
[gateway]
listen = "127.0.0.1:{port}"
upstream = "http://127.0.0.1:{upstream_port}"
cert = "{data / 'tls' / 'server.pem'}"
key = "{data / 'tls' / 'server.key'}"
client_ca = "{data / 'ca' / 'root.pem'}"
access_log = "{workdir / 'access.log'}"

[metrics]
listen = "127.0.0.1:{metrics}"

[revocation]
feed_url = "{base}/feed/revocations"
token_file = "{data / 'feed.token'}"
ca_file = "{data / 'ca' / 'root.pem'}"
max_staleness = "30s"

[[routes]]
name = "nodes"
prefix = "/"
allow_dns = ["*.test", "*.nodes.nodetrust.internal"]
""")
    log_path = workdir / "gateway.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(gateway_command(config), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=workdir)
    try:
        yield port, proc
    finally:
        stop_process(proc)


def client_context(nodetrust: NodetrustServer, node: Enrolled, workdir: Path) -> ssl.SSLContext:
    cert, key = node.write(workdir / "node")
    ctx = ssl.create_default_context(cafile=str(nodetrust.ca_bundle))
    ctx.load_cert_chain(cert, key)
    return ctx


def wait_until_serving(port: int, ctx: ssl.SSLContext, proc: subprocess.Popen[bytes],
                       log_path: Path) -> None:
    """Until the gateway answers 200: listening, and caught up with the feed (before that it
    refuses with 503 stale, by design). The process's own exit is the poll interval."""
    deadline = time.monotonic() + START_DEADLINE
    last: Any = None
    while time.monotonic() < deadline:
        try:
            conn = OneConnection(port, ctx)
            try:
                status, body = conn.get("/hello")
            finally:
                conn.close()
            if status == 200:
                return
            last = (status, body)
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)
        if proc.returncode is not None:
            break
    raise AssertionError(f"gateway not serving (last: {last!r}, exit {proc.returncode})\n"
                         + log_path.read_text(errors="replace")[-4000:])


# What `nodetrust revoke` (or decommission, rejoin) will do: its own Store on the server's
# file, in another process. Prints the CLOCK_MONOTONIC instant of the commit (system-wide on
# Linux, so comparable with ours).
_OTHER_PROCESS = """
import sys, time
from datetime import datetime, timezone
from pathlib import Path
from server.store.repo import Store
store = Store(Path(sys.argv[1]))
assert store.revoke_certificate(sys.argv[2], reason=1, when=datetime.now(timezone.utc))
print(time.monotonic())
store.close()
"""


async def _revoke(how: str, acme: RemoteAcme, node: Enrolled,
                  nodetrust: NodetrustServer) -> tuple[float, float]:
    """Revoke; returns (started, recorded): monotonic instants before the request and at
    (ACME: right after the answer; other process: right after the commit) the record."""
    started = time.monotonic()
    if how == "acme":
        await acme.revoke(node, reason=1)
        return started, time.monotonic()
    if how == "cli":  # the operator's command, as typed
        cli = Path(sys.executable).with_name("nodetrust")
        await asyncio.to_thread(
            subprocess.run, [str(cli), "--data-dir", str(nodetrust.data_dir), "revoke",
                             "--serial", format(node.cert.serial_number, "x"),
                             "--reason", "keycompromise"],
            capture_output=True, check=True, text=True)
        return started, time.monotonic()
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", _OTHER_PROCESS,
                         str(nodetrust.data_dir / "nodetrust.db"),
                         format(node.cert.serial_number, "x")],
        capture_output=True, check=True, text=True)
    return started, float(out.stdout.strip())


@pytest.mark.parametrize("how", ["acme", "other-process", "cli"])
async def test_revoked_node_is_refused_on_its_open_connection_within_a_second(
        how: str, nodetrust: NodetrustServer, hello_upstream: int,
        enrolled_node: tuple[Enrolled, RemoteAcme], tmp_path: Path,
        record_property: Any) -> None:
    enrolled, acme = enrolled_node
    ctx = client_context(nodetrust, enrolled, tmp_path)
    with run_gateway(nodetrust, hello_upstream, tmp_path / "gateway") as (port, proc):
        await asyncio.to_thread(wait_until_serving, port, ctx, proc,
                                tmp_path / "gateway" / "gateway.log")
        conn = await asyncio.to_thread(OneConnection, port, ctx)
        try:
            status, body = await asyncio.to_thread(conn.get, "/hello")
            assert (status, body) == (200, b"hello from upstream")

            started, recorded = await _revoke(how, acme, enrolled, nodetrust)
            deadline = started + 5 * REFUSAL_BUDGET  # fail with a number, not a hang
            while True:
                status, body = await asyncio.to_thread(conn.get, "/hello")
                if status != 200 or time.monotonic() > deadline:
                    break
            refused = time.monotonic()
        finally:
            conn.close()
        assert status == 403, (status, body)
        problem = json.loads(body)
        assert problem["reason"] == "revoked", problem
        # The requirement counts from the revocation being recorded; ACME's figure also
        # includes the whole revokeCert request, so it is an upper bound.
        # cli: counted from the command's exit (its commit is a few ms earlier); the CLI's
        # own interpreter start-up is not the gateway's latency.
        latency = refused - (started if how == "acme" else recorded)
        record_property("revocation_to_refusal_s", round(latency, 4))
        print(f"\n{how}: revocation-to-refusal {latency * 1000:.1f} ms "
              f"({(refused - recorded) * 1000:.1f} ms after the revocation was recorded)")
        assert latency < REFUSAL_BUDGET, f"refused after {latency:.3f}s"

        # A new handshake with the revoked certificate gets nowhere either: refused in the
        # handshake, or at the latest on its first request.
        try:
            fresh = await asyncio.to_thread(OneConnection, port, ctx)
            try:
                status, body = await asyncio.to_thread(fresh.get, "/hello")
            finally:
                fresh.close()
        except (ssl.SSLError, ConnectionError, http.client.HTTPException) as exc:
            record_property("new_handshake", f"refused in TLS: {exc!r}")
            return
        assert status == 403 and json.loads(body)["reason"] == "revoked", (status, body)
        record_property("new_handshake", "403 revoked on its first request")


async def test_decommissioned_device_is_cut_off_and_cannot_reenroll(
        tmp_path: Path, hello_upstream: int) -> None:
    """The operator's `nodetrust nodes decommission` on a device enrolled with
    device-attest-01: its open gateway connection is refused within a second, and its
    bootstrap certificate cannot enroll again (until `nodes readmit`)."""
    from server.demo import ensure_demo_manufacturer, issue_bootstrap, write_bootstrap

    workdir = tmp_path / "server"
    root, root_key, _ = ensure_demo_manufacturer(workdir / "data")
    boot_cert, boot_key = write_bootstrap(tmp_path / "device",
                                          *issue_bootstrap("GW-DEV-1", root, root_key))
    cli = [str(Path(sys.executable).with_name("nodetrust"))]
    with start_nodetrust(workdir) as server:
        def enroll(out: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*cli, "enroll", "--server", server.directory_url, "--bootstrap-cert",
                 str(boot_cert), "--bootstrap-key", str(boot_key), "--out", str(tmp_path / out),
                 "--ca-bundle", str(server.ca_bundle)],
                capture_output=True, text=True, timeout=60, check=False)

        first = await asyncio.to_thread(enroll, "node")
        assert first.returncode == 0, first.stderr
        ctx = ssl.create_default_context(cafile=str(server.ca_bundle))
        ctx.load_cert_chain(tmp_path / "node" / "node.pem", tmp_path / "node" / "node.key")
        with run_gateway(server, hello_upstream, tmp_path / "gateway") as (port, proc):
            await asyncio.to_thread(wait_until_serving, port, ctx, proc,
                                    tmp_path / "gateway" / "gateway.log")
            conn = await asyncio.to_thread(OneConnection, port, ctx)
            try:
                assert (await asyncio.to_thread(conn.get, "/hello"))[0] == 200
                done = await asyncio.to_thread(
                    subprocess.run, [*cli, "--data-dir", str(server.data_dir), "nodes",
                                     "decommission", "gw-dev-1"],
                    capture_output=True, text=True, timeout=60, check=True)
                recorded = time.monotonic()
                assert "decommissioned gw-dev-1" in done.stdout
                deadline = recorded + 5 * REFUSAL_BUDGET  # fail with a number, not a hang
                while True:
                    status, body = await asyncio.to_thread(conn.get, "/hello")
                    if status != 200 or time.monotonic() > deadline:
                        break
                latency = time.monotonic() - recorded
            finally:
                conn.close()
        assert status == 403 and json.loads(body)["reason"] == "revoked", (status, body)
        print(f"\ndecommission: refused {latency * 1000:.1f} ms after the command returned")
        assert latency < REFUSAL_BUDGET, f"refused after {latency:.3f}s"
        again = await asyncio.to_thread(enroll, "node2")
        assert again.returncode == 1 and "decommissioned" in again.stderr, again.stderr
