"""Fixtures for the end-to-end runs: one ACME server per test module, stock clients per test.

Target: NODETRUST_E2E_TARGET=pebble|nodetrust (default in acme_servers.DEFAULT_TARGET).
Run:    .venv/bin/python -m pytest -q tests/e2e -m e2e
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from acme_servers import AcmeServer, pebble_binary, selected_target, start_server
from clients import Certbot, Lego, certbot_binary, lego_binary


@pytest.fixture(scope="session")
def e2e_target() -> str:
    return selected_target()


@pytest.fixture(scope="module")
def acme_server(e2e_target: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeServer]:
    """A fresh server per test module (Pebble: new CA, empty in-memory store)."""
    if e2e_target == "pebble" and pebble_binary() is None:
        pytest.skip("pebble not installed (apt-get install pebble)")
    workdir = tmp_path_factory.mktemp(f"{e2e_target}-server")
    with start_server(e2e_target, workdir) as server:
        yield server


@pytest.fixture
def certbot(acme_server: AcmeServer, tmp_path: Path) -> Certbot:
    if certbot_binary() is None:
        pytest.skip("certbot not installed in the virtualenv")
    return Certbot(acme_server, tmp_path / "certbot")


@pytest.fixture
def lego(acme_server: AcmeServer, tmp_path: Path) -> Lego:
    if lego_binary() is None:
        pytest.skip("lego not installed (apt-get install lego)")
    return Lego(acme_server, tmp_path / "lego")


# ---------------------------------------------------------------- timing summary for e2e tests

_TIMINGS: list[tuple[str, float, float]] = []  # (nodeid, setup seconds, call seconds)
_SETUP: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "e2e" not in report.keywords:
        return
    if report.when == "setup":
        _SETUP[report.nodeid] = report.duration
    elif report.when == "call":
        _TIMINGS.append((report.nodeid, _SETUP.pop(report.nodeid, 0.0), report.duration))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _TIMINGS:
        return
    terminalreporter.section("e2e timings (setup includes server start when first in module)")
    for nodeid, setup, call in _TIMINGS:
        terminalreporter.write_line(f"{setup:6.2f}s setup {call:6.2f}s call  {nodeid}")
    total = sum(s + c for _, s, c in _TIMINGS)
    terminalreporter.write_line(f"{total:6.2f}s total")
