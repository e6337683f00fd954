"""FeedClient against a real nodetrust server over HTTPS: revocations reach the gateway's
revoked set within a long-poll, a restart loses nothing, and a silent feed goes stale."""
from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator

import pytest

from gateway.revocation import FeedClient, RevocationState
from server.store.repo import Store
from support.nodetrust_tls import NodetrustTls
from support.remote_acme import Http01Responder, RemoteAcme

DEADLINE = 10.0  # generous bound for a condition that normally holds in milliseconds


@pytest.fixture
async def responder() -> AsyncIterator[Http01Responder]:
    r = Http01Responder()
    await r.start()
    yield r
    await r.close()


@pytest.fixture
async def server(tmp_path: Path, responder: Http01Responder) -> AsyncIterator[NodetrustTls]:
    srv = NodetrustTls(tmp_path, responder.port)
    await srv.start()
    yield srv
    await srv.stop()


@contextlib.asynccontextmanager
async def following(server: NodetrustTls, state: RevocationState,
                    wait: float = 5.0) -> AsyncIterator[FeedClient]:
    client = FeedClient(state, feed_url=server.feed_url, token=server.token, ca_file=server.root,
                        wait=wait, backoff_max=0.5)
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def fresh(state: RevocationState) -> bool:
    return state.is_fresh(time.monotonic())


async def test_revocation_reaches_the_state_within_the_long_poll(
        server: NodetrustTls, responder: Http01Responder) -> None:
    state = RevocationState(max_staleness=30)
    assert not fresh(state)  # fail closed until the first answer
    async with RemoteAcme(server.url, server.root, responder) as acme:
        node = await acme.enroll("gw1.test")
        async with following(server, state) as client:
            await client.wait_for(lambda: fresh(state), DEADLINE)
            assert state.last_seq == 0 and not state.is_revoked(node.cert.serial_number)
            # Parked in a long-poll (wait=5s): the answer comes from the revocation itself.
            await server.feed.wait_for_waiters(1)
            await acme.revoke(node)
            await client.wait_for(lambda: state.is_revoked(node.cert.serial_number), DEADLINE)
            assert state.last_seq == 1 and state.lag_seconds >= 0
            assert client.errors == 0


async def test_restart_resumes_from_last_seq_and_misses_nothing(
        server: NodetrustTls, responder: Http01Responder) -> None:
    state = RevocationState(max_staleness=30)
    async with RemoteAcme(server.url, server.root, responder) as acme:
        a, b, c = [await acme.enroll(f"node{i}.test") for i in "abc"]
    async with following(server, state) as client:
        async with RemoteAcme(server.url, server.root, responder) as acme:
            await acme.revoke(a)
        await client.wait_for(lambda: state.is_revoked(a.cert.serial_number), DEADLINE)
        assert state.last_seq == 1

        await server.stop()
        errors = client.errors
        await client.wait_for(lambda: client.errors > errors, DEADLINE)
        # While the server is down the operator CLI revokes b on the same database.
        cli = Store(server.cfg.db_path)
        try:
            assert cli.revoke_certificate(format(b.cert.serial_number, "x"), reason=1,
                                          when=datetime.now(timezone.utc))
        finally:
            cli.close()
        await server.start()

        await client.wait_for(lambda: state.is_revoked(b.cert.serial_number), DEADLINE)
        async with RemoteAcme(server.url, server.root, responder) as acme:
            await acme.revoke(c)
        await client.wait_for(lambda: state.is_revoked(c.cert.serial_number), DEADLINE)
        assert state.last_seq == 3 and len(state) == 3
        assert all(state.is_revoked(n.cert.serial_number) for n in (a, b, c))


async def test_silent_feed_goes_stale_and_recovers(server: NodetrustTls) -> None:
    max_staleness = 30.0
    state = RevocationState(max_staleness=max_staleness)
    async with following(server, state) as client:
        await client.wait_for(lambda: fresh(state), DEADLINE)
        await server.stop()
        # The parked poll is released by the shutdown (a real answer); the next one fails.
        errors = client.errors
        await client.wait_for(lambda: client.errors > errors, DEADLINE)
        heard = state.heard_at
        assert heard is not None
        failures = client.errors
        await client.wait_for(lambda: client.errors > failures, DEADLINE)
        assert state.heard_at == heard  # failures never count as hearing from the feed
        # Injected clock: fresh up to max_staleness after the last answer, refused after.
        assert state.is_fresh(heard + max_staleness)
        assert not state.is_fresh(heard + max_staleness + 0.001)

        await server.start()
        await client.wait_for(lambda: state.heard_at != heard, DEADLINE)
        assert state.is_fresh(heard + max_staleness + 0.001)
        assert fresh(state)


async def test_wrong_token_never_becomes_fresh(server: NodetrustTls) -> None:
    state = RevocationState(max_staleness=30)
    client = FeedClient(state, feed_url=server.feed_url, token="not-the-token",
                        ca_file=server.root, backoff_max=0.5)
    task = asyncio.create_task(client.run())
    try:
        await client.wait_for(lambda: client.errors >= 2, DEADLINE)
        assert "401" in client.last_error
        assert not fresh(state) and state.heard_at is None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_state_is_a_plain_set_with_a_staleness_bound() -> None:
    state = RevocationState(max_staleness=2.0)
    assert not state.is_fresh(0.0) and state.age(5.0) == float("inf")
    state.mark_revoked([0x10, 0x20], seq=7, now=100.0)
    assert state.is_revoked(0x10) and state.is_revoked(0x20) and not state.is_revoked(0x30)
    assert state.last_seq == 7 and state.is_fresh(102.0) and not state.is_fresh(102.5)
    state.mark_revoked([], seq=3, now=103.0)  # never moves backwards
    assert state.last_seq == 7
    state.touch(104.0)
    assert state.is_fresh(105.0) and state.age(105.0) == 1.0


def test_wait_is_capped_below_the_staleness_bound(tmp_path: Path) -> None:
    state = RevocationState(max_staleness=9.0)
    client = FeedClient(state, feed_url="https://127.0.0.1:1/feed/revocations", token="t",
                        ca_file=tmp_path / "ca.pem", wait=10.0)
    assert client.wait == 3.0


async def test_client_waits_for_a_ca_file_that_appears_later(
        server: NodetrustTls, tmp_path: Path) -> None:
    # First start: the gateway may come up before the server has written its CA.
    ca_file = tmp_path / "later" / "root.pem"
    state = RevocationState(max_staleness=30)
    client = FeedClient(state, feed_url=server.feed_url, token=server.token, ca_file=ca_file,
                        backoff_max=0.2)
    task = asyncio.create_task(client.run())
    try:
        await client.wait_for(lambda: client.errors >= 1, DEADLINE)
        assert not fresh(state)
        ca_file.parent.mkdir()
        ca_file.write_bytes(server.root.read_bytes())
        await client.wait_for(lambda: fresh(state), DEADLINE)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_node_labels_reach_the_route_policy_and_follow_changes(server: NodetrustTls) -> None:
    from server.models import Node, NodeStatus

    now = datetime.now(timezone.utc)
    store = Store(server.cfg.db_path)  # the operator's CLI, in effect
    try:
        node = Node(device_id="SN-L1", node_id="sn-l1", manufacturer="acme", bootstrap_serial="1",
                    bootstrap_spki="00", dns_name="sn-l1.nodes.nodetrust.internal",
                    spiffe_id="spiffe://nodetrust.internal/node/sn-l1",
                    status=NodeStatus.PENDING, created_at=now, updated_at=now)
        with store._tx() as c:
            store._upsert_node(c, node)
        store.set_node_status("SN-L1", NodeStatus.ACTIVE, now)
        store.set_node_labels("SN-L1", {"role": "gateway", "site": "lyon"}, now)
        pushed: list[dict[str, list[str]]] = []
        state = RevocationState(max_staleness=30)
        client = FeedClient(state, feed_url=server.feed_url, token=server.token,
                            ca_file=server.root, wait=0.5, backoff_max=0.5,
                            on_labels=pushed.append)
        task = asyncio.create_task(client.run())
        try:
            await client.wait_for(lambda: bool(pushed), DEADLINE)
            assert pushed[-1] == {"sn-l1": ["role=gateway", "site=lyon"]}
            store.set_node_labels("SN-L1", {"role": "sensor"},
                                  datetime.now(timezone.utc) + timedelta(seconds=1))
            await client.wait_for(lambda: pushed[-1] == {"sn-l1": ["role=sensor"]}, DEADLINE)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        store.close()
