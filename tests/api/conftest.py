"""API test fixtures (types and helpers live in tests/support/harness.py)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from server.app import create_app
from server.config import parse_config
from support.harness import Harness, Http01Responder, MakeHarness, base_config


@pytest.fixture
async def http01() -> AsyncIterator[Http01Responder]:
    responder = Http01Responder()
    await responder.start()
    yield responder
    assert responder.server is not None
    await responder.server.close()


@pytest.fixture
async def make_harness(tmp_path: Path, http01: Http01Responder,
                       aiohttp_client: Any) -> MakeHarness:
    """make_harness(acme={...}, identifiers={...}, ...) merges tables into the base config."""
    count = 0

    async def make(**tables: dict[str, Any]) -> Harness:
        nonlocal count
        count += 1
        assert http01.server is not None and http01.server.port is not None
        raw = base_config(tmp_path / f"srv{count}", http01.server.port)
        for name, table in tables.items():
            merged = copy.deepcopy(raw.get(name, {}))
            merged.update(table)
            raw[name] = merged
        cfg = parse_config(raw, "test.toml", tmp_path)
        app = create_app(cfg)
        http = await aiohttp_client(app)
        return Harness(http, app, http01)

    return make


@pytest.fixture
async def harness(make_harness: MakeHarness) -> Harness:
    return await make_harness()

