"""The operator governs enrolled devices with the `nodetrust` CLI beside a running server:
inventory, owners and labels, the bootstrap deny list, decommission and readmit, and an
approved rejoin. Nodes enroll with `nodetrust enroll` (device-attest-01) as in the field."""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from acme_servers import NodetrustServer, start_nodetrust
from clients import ClientFailed
from test_device_enroll import demo_device, enroll, nodetrust_cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodetrustServer]:
    workdir = tmp_path_factory.mktemp("nodetrust-ops")
    demo_device(workdir / "data", "SN-SEED", workdir / "seed")
    with start_nodetrust(workdir) as srv:
        yield srv


def cli(server: NodetrustServer, *args: str, ok: bool = True) -> Any:
    proc = subprocess.run([*nodetrust_cli(), "--data-dir", str(server.data_dir), *args, "--json"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          check=False)
    if not ok:
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert proc.stderr.startswith("nodetrust: ") and "Traceback" not in proc.stderr
        return proc.stderr
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def test_inventory_owner_labels_and_expiry(server: NodetrustServer, tmp_path: Path) -> None:
    for dev in ("OPS-1", "OPS-2"):
        cert, key = demo_device(server.data_dir, dev, tmp_path / dev)
        enroll(server, cert, key, tmp_path / dev / "node")
    cli(server, "nodes", "set-owner", "ops-1", "team-edge")
    cli(server, "nodes", "label", "ops-1", "site=lyon", "role=gateway")
    rows = {r["node"]: r for r in cli(server, "nodes", "list")}
    assert rows["ops-1"]["owner"] == "team-edge" and rows["ops-1"]["status"] == "active"
    assert rows["ops-1"]["labels"] == "role=gateway,site=lyon"
    assert [r["node"] for r in cli(server, "nodes", "list", "--owner", "team-edge")] == ["ops-1"]
    soon = {r["node"] for r in cli(server, "nodes", "list", "--expiring-within", "25h")}
    assert {"ops-1", "ops-2"} <= soon
    assert "ops-1" not in {r["node"] for r in cli(server, "nodes", "list", "--expiring-within", "1h")}
    shown = cli(server, "nodes", "show", "OPS-1")
    assert shown["spiffe_id"] == "spiffe://nodetrust.internal/node/ops-1"
    assert len(shown["certificates"]) == 1 and shown["certificates"][0]["status"] == "valid"
    assert "no node" in cli(server, "nodes", "show", "nope", ok=False)


def test_deny_list_blocks_enrollment_until_allowed(server: NodetrustServer, tmp_path: Path) -> None:
    cert, key = demo_device(server.data_dir, "DENY-1", tmp_path / "dev")
    cli(server, "bootstrap", "deny", "DENY-1", "--note", "reported stolen")
    with pytest.raises(ClientFailed) as refused:
        enroll(server, cert, key, tmp_path / "node")
    assert "deny list" in str(refused.value)
    assert [r["value"] for r in cli(server, "bootstrap", "list")] == ["DENY-1"]
    cli(server, "bootstrap", "allow", "DENY-1")
    enroll(server, cert, key, tmp_path / "node")


def test_decommission_revokes_and_blocks_until_readmit(server: NodetrustServer,
                                                       tmp_path: Path) -> None:
    cert, key = demo_device(server.data_dir, "DEC-1", tmp_path / "dev")
    result = enroll(server, cert, key, tmp_path / "node")
    leaf = x509.load_pem_x509_certificate(Path(str(result["cert"])).read_bytes())
    done = cli(server, "nodes", "decommission", "dec-1")
    assert done["revoked"] == [format(leaf.serial_number, "x")]
    assert server.is_revoked(leaf)  # the CRL says so at once
    with pytest.raises(ClientFailed) as refused:
        enroll(server, cert, key, tmp_path / "node2")
    assert "decommissioned" in str(refused.value)
    cli(server, "nodes", "readmit", "dec-1")
    enroll(server, cert, key, tmp_path / "node3")
    assert cli(server, "nodes", "show", "dec-1")["status"] == "active"


def test_revoke_by_node_and_by_serial(server: NodetrustServer, tmp_path: Path) -> None:
    cert, key = demo_device(server.data_dir, "REV-1", tmp_path / "dev")
    result = enroll(server, cert, key, tmp_path / "node")
    leaf = x509.load_pem_x509_certificate(Path(str(result["cert"])).read_bytes())
    serial = format(leaf.serial_number, "x")
    out = cli(server, "revoke", "--serial", serial, "--reason", "keycompromise")
    assert out["revoked"] == [serial]
    assert "already revoked" in cli(server, "revoke", "--serial", serial, ok=False)
    assert "no valid certificate" in cli(server, "revoke", "--node", "rev-1", ok=False)
