"""kill -9 in the middle of many finalizes: nothing half-written, everything resumes."""
from __future__ import annotations

import asyncio
import signal
import sqlite3
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from acme_servers import NodetrustServer, selected_target, start_nodetrust
from support.acmeclient import AcmeTestClient, Key, b64u, csr_der

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(selected_target() != "nodetrust", reason="nodetrust only")]
WORKERS = 24


async def _responder(port: int, tokens: dict[str, str]) -> web.AppRunner:
    app = web.Application()

    async def answer(request: web.Request) -> web.Response:
        body = tokens.get(request.match_info["token"])
        return web.Response(text=body) if body else web.Response(status=404)

    app.router.add_get("/.well-known/acme-challenge/{token}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def _poll(c: AcmeTestClient, url: str, until: set[str]) -> dict[str, Any]:
    for _ in range(400):
        r = await c.post(url)
        if r.status == 200 and r.json["status"] in until:
            return dict(r.json)
        await asyncio.sleep(0.05)  # wait-ok: polling a resource of another process
    raise AssertionError(f"{url} never reached {until}")


async def _ready_order(session: aiohttp.ClientSession, base: str, tokens: dict[str, str],
                       name: str) -> tuple[AcmeTestClient, str, dict[str, Any]]:
    c = await AcmeTestClient(session, base, key=Key(), retry_bad_nonce=True).start()
    assert (await c.new_account()).status == 201
    order = await c.new_order(name)
    authz = (await c.post(order.json["authorizations"][0])).json
    ch = next(x for x in authz["challenges"] if x["type"] == "http-01")
    tokens[ch["token"]] = f"{ch['token']}.{c.key.thumbprint}"
    await c.post(ch["url"], {})
    await _poll(c, order.json["authorizations"][0], {"valid"})
    return c, order.location, await _poll(c, order.location, {"ready"})


def _invariants(db: Path) -> dict[str, int]:
    """Every valid order has its certificate and every certificate its valid order."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        orphans = conn.execute(
            "SELECT COUNT(*) FROM certificates c LEFT JOIN orders o ON o.id = c.order_id "
            "WHERE o.status IS NOT 'valid' OR o.certificate_serial IS NOT c.serial").fetchone()[0]
        missing = conn.execute(
            "SELECT COUNT(*) FROM orders o LEFT JOIN certificates c ON c.serial = o.certificate_serial "
            "WHERE o.status = 'valid' AND c.serial IS NULL").fetchone()[0]
        counts = dict(conn.execute("SELECT status, COUNT(*) FROM orders GROUP BY status").fetchall())
    finally:
        conn.close()
    assert orphans == 0 and missing == 0, (orphans, missing)
    return counts


async def test_kill_9_mid_finalize_then_resume(tmp_path: Path) -> None:
    with start_nodetrust(tmp_path) as server:
        assert isinstance(server, NodetrustServer) and server._proc is not None
        base = server.directory_url.rsplit("/acme/", 1)[0]
        tls = ssl.create_default_context(cafile=str(server.ca_bundle))
        tokens: dict[str, str] = {}
        runner = await _responder(server.http_port, tokens)
        try:
            async with aiohttp.ClientSession(base_url=base,
                                             connector=aiohttp.TCPConnector(ssl=tls)) as session:
                ready = await asyncio.gather(*(_ready_order(session, base, tokens, f"crash{i}.test")
                                               for i in range(WORKERS)))
                keys = {}

                async def finalize(c: AcmeTestClient, url: str, order: dict[str, Any]) -> None:
                    der, keys[url] = csr_der([order["identifiers"][0]["value"]])
                    await c.post(order["finalize"], {"csr": b64u(der)})

                tasks = [asyncio.ensure_future(finalize(*r)) for r in ready]
                # Kill as soon as the first finalize has answered: the rest are in flight.
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                server._proc.send_signal(signal.SIGKILL)
                server._proc.wait()
                await asyncio.gather(*tasks, return_exceptions=True)

                before = _invariants(server.data_dir / "nodetrust.db")
                print("orders at the kill:", before)
                assert before.get("valid", 0) >= 1
                server.launch()  # restart on the same data dir
                after = _invariants(server.data_dir / "nodetrust.db")
                assert after.get("processing", 0) == 0, after

                roots = x509.load_pem_x509_certificates(server.issuer_roots.read_bytes())
                for c, url, _ in ready:
                    order = (await c.post(url)).json
                    if order["status"] == "ready":  # its finalize never reached the disk
                        der, keys[url] = csr_der([order["identifiers"][0]["value"]])
                        order = (await c.post(order["finalize"], {"csr": b64u(der)})).json
                    assert order["status"] == "valid", order
                    chain = x509.load_pem_x509_certificates((await c.post(order["certificate"])).body)
                    name = order["identifiers"][0]["value"]
                    PolicyBuilder().store(Store(roots)).build_server_verifier(
                        x509.DNSName(name)).verify(chain[0], chain[1:])
                assert _invariants(server.data_dir / "nodetrust.db") == {"valid": WORKERS}
        finally:
            await runner.cleanup()
