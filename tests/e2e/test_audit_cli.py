"""The audit log end to end: a device enrolls against a running server, the operator acts
with the CLI, `nodetrust audit list` shows who did what, and `nodetrust audit verify` names
the row someone edited or deleted directly in SQLite."""
from __future__ import annotations

import getpass
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from acme_servers import NodetrustServer, start_nodetrust
from test_device_enroll import demo_device, enroll, nodetrust_cli

pytestmark = pytest.mark.e2e

MIRROR = "audit.jsonl"  # relative to the server's config file


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodetrustServer]:
    workdir = tmp_path_factory.mktemp("nodetrust-audit")
    demo_device(workdir / "data", "SN-SEED", workdir / "seed")
    with start_nodetrust(workdir, f'\n[audit]\nmirror_file = "{MIRROR}"\n') as srv:
        yield srv


def run(server: NodetrustServer, *args: str) -> subprocess.CompletedProcess[str]:
    # The server's own config, so the CLI knows the mirror file too.
    config = server.data_dir.parent / "nodetrust-e2e.toml"
    return subprocess.run([*nodetrust_cli(), "--config", str(config), "--data-dir",
                           str(server.data_dir), *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, check=False)


def cli_json(server: NodetrustServer, *args: str) -> Any:
    proc = run(server, *args, "--json")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def verify_fails(server: NodetrustServer) -> str:
    proc = run(server, "audit", "verify")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc.stderr


def tamper(server: NodetrustServer, sql: str, *params: Any) -> None:
    db = sqlite3.connect(server.data_dir / "nodetrust.db")
    try:
        with db:  # commits
            db.execute(sql, params)
    finally:
        db.close()


def test_enrollment_then_operator_changes_are_listed(server: NodetrustServer,
                                                     tmp_path: Path) -> None:
    cert, key = demo_device(server.data_dir, "AUD-1", tmp_path / "dev")
    enroll(server, cert, key, tmp_path / "node")
    cli_json(server, "nodes", "set-owner", "aud-1", "team-edge")
    rows = cli_json(server, "audit", "list", "--node", "AUD-1")  # a device id works too
    assert [r["event"] for r in rows] == ["challenge.valid", "certificate.issued", "node.owner_set"]
    assert rows[-1]["actor"] == f"cli:{getpass.getuser()}"
    assert rows[0]["actor"].startswith("acme:") and rows[0]["detail"]["device"] == "AUD-1"
    table = run(server, "audit", "list", "--event", "node")
    assert table.returncode == 0 and "node.owner_set" in table.stdout
    assert "owner=team-edge" in table.stdout and table.stdout.startswith("SEQ")
    ok = run(server, "audit", "verify")
    assert ok.returncode == 0 and "chain intact" in ok.stdout and "mirror" in ok.stdout, ok
    mirror = [json.loads(x) for x in (server.data_dir.parent / MIRROR).read_text().splitlines()]
    assert [m["hash"] for m in mirror] == [r["hash"] for r in cli_json(server, "audit", "list",
                                                                         "--limit", "1000")]


def test_sighup_reload_is_audited(server: NodetrustServer) -> None:
    assert server._proc is not None
    server._proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not cli_json(server, "audit", "list", "--event", "policy"):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.1)  # wait-ok: polling another process for the reload
    (reload,) = cli_json(server, "audit", "list", "--event", "policy")
    assert reload["event"] == "policy.reloaded" and reload["actor"] == "server"


def test_edited_then_deleted_rows_are_named(server: NodetrustServer, tmp_path: Path) -> None:
    cert, key = demo_device(server.data_dir, "AUD-2", tmp_path / "dev")
    enroll(server, cert, key, tmp_path / "node")
    cli_json(server, "nodes", "label", "aud-2", "site=lyon")  # so the issuance is not the tail
    issued = cli_json(server, "audit", "list", "--node", "aud-2",
                      "--event", "certificate.issued")[0]
    seq = issued["seq"]
    with sqlite3.connect(server.data_dir / "nodetrust.db") as db:
        (original,) = db.execute("SELECT detail FROM audit_log WHERE seq = ?", (seq,)).fetchone()

    tamper(server, "UPDATE audit_log SET detail = ? WHERE seq = ?",
           original.replace("}", ',"note":"nothing to see"}'), seq)
    err = verify_fails(server)
    assert err.startswith(f"nodetrust: audit verify: row {seq} (certificate.issued at "
                          f"{issued['at']}): hash mismatch — the row was edited"), err
    out = json.loads(run(server, "audit", "verify", "--json").stdout)
    assert not out["ok"] and out["problems"][0] == {
        "seq": seq, "kind": "edited", "message": err.split("audit verify: ", 1)[1].strip()}

    tamper(server, "UPDATE audit_log SET detail = ? WHERE seq = ?", original, seq)
    assert run(server, "audit", "verify").returncode == 0  # byte for byte back: intact again

    tamper(server, "DELETE FROM audit_log WHERE seq = ?", seq)
    err = verify_fails(server)
    assert f"row {seq} missing — deleted between {seq - 1} and {seq + 1}" in err, err

    # The newest row gone as well: AUTOINCREMENT's high-water mark still knows it existed.
    tamper(server, "DELETE FROM audit_log WHERE seq = ?", seq + 1)
    err = verify_fails(server)
    assert f"rows {seq}-{seq + 1} missing — deleted after row {seq - 1}" in err, err
