"""Gateway test fixtures: real TLS with certificates from a CertificateAuthority in tmp_path, a
small aiohttp upstream on loopback, and a Gateway on the test loop (uvloop, as in production)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import uvloop
from aiohttp.test_utils import TestServer
from support.gateway_harness import (
    ClientCert,
    Harness,
    Pki,
    Upstream,
    make_upstream_app,
    start_gateway,
)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item
                                  ) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"uvloop": uvloop.new_event_loop}  # the loop the gateway runs on in production


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def server_tls(pki: Pki) -> tuple[Path, Path]:
    return pki.ca.server_certificate(["127.0.0.1", "localhost"], pki.dir / "tls")


@pytest.fixture(scope="session")
def node(pki: Pki) -> ClientCert:
    return pki.client("node-1")


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    up.server = server = TestServer(make_upstream_app(up), host="127.0.0.1")
    await server.start_server()
    yield up
    up.release.set()
    up.download_gate.set()
    await server.close()


@pytest.fixture
async def gateway(tmp_path: Path, pki: Pki, server_tls: tuple[Path, Path],
                  upstream: Upstream) -> AsyncIterator[Harness]:
    h = await start_gateway(tmp_path, pki, server_tls, upstream.port)
    yield h
    await h.gw.stop(drain_seconds=1)
    h.gw.access_log.close()
