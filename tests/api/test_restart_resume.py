"""What a crash leaves in flight is finished by the next start (deterministic half of
tests/e2e/test_crash_recovery.py, which kills a real process)."""
from __future__ import annotations

from typing import Any

from server.app import create_app
from server.models import Status
from support.acmeclient import AcmeTestClient, b64u, csr_der

from support.harness import Harness


async def _restart(harness: Harness, aiohttp_client: Any) -> Harness:
    """A second app on the same data dir and database, as after a crash and restart."""
    app = create_app(harness.ctx.cfg)
    return Harness(await aiohttp_client(app), app, harness.responder)


async def test_order_left_processing_is_issued_on_restart(harness: Harness,
                                                           aiohttp_client: Any) -> None:
    c = await harness.account()
    order = await harness.ready_order(c, "resume.test")
    order_id = order.location.rsplit("/", 1)[1]
    der, _ = csr_der(["resume.test"])
    # The commit finalize makes before signing; the "crash" comes right after it.
    assert harness.ctx.store.set_order_status(order_id, Status.PROCESSING,
                                              expect=(Status.PENDING, Status.READY), csr_der=der)

    again = await _restart(harness, aiohttp_client)
    c2 = AcmeTestClient(again.http, c.base, key=c.key, kid=c.kid, directory=c.directory)
    body = (await c2.post(order.location)).json
    assert body["status"] == "valid" and body["certificate"]
    pem = await c2.post(body["certificate"])
    assert pem.status == 200 and pem.body.count(b"BEGIN CERTIFICATE") == 2


async def test_challenge_left_processing_is_validated_on_restart(harness: Harness,
                                                                 aiohttp_client: Any) -> None:
    c = await harness.account()
    order = (await c.new_order("resume2.test")).json
    authz = (await c.post(order["authorizations"][0])).json
    ch = next(x for x in authz["challenges"] if x["type"] == "http-01")
    harness.responder.tokens[ch["token"]] = f"{ch['token']}.{c.key.thumbprint}"
    # The client responded, the server recorded `processing`, then died before validating.
    assert harness.ctx.store.start_challenge(ch["url"].rsplit("/", 1)[1])

    again = await _restart(harness, aiohttp_client)
    await again.ctx.orders.drain()
    c2 = AcmeTestClient(again.http, c.base, key=c.key, kid=c.kid, directory=c.directory)
    assert (await c2.post(order["authorizations"][0])).json["status"] == "valid"
    fin_der, _ = csr_der(["resume2.test"])
    assert (await c2.post(order["finalize"], {"csr": b64u(fin_der)})).json["status"] == "valid"
