"""The operator dashboard in a real browser, and the CLI's remote mode, against a running
server: two demo devices enroll with `nodetrust enroll`, an operator sets owners through
`nodetrust --server-admin`, and headless Chromium shows both nodes, their owners and expiry,
and the expiry chart.

Chromium logs in through /admin/login?token=... (the e2e config switches `[admin]
token_in_url` on): the one-shot redirect sets the HttpOnly session cookie, and the token
leaves the address bar. Chromium is Debian's `chromium` (scripts/setup installs it).
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import ssl
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from acme_servers import NodetrustServer, free_port, start_nodetrust
from test_device_enroll import demo_device, enroll, nodetrust_cli

pytestmark = pytest.mark.e2e

BROWSER_TIMEOUT = 90.0


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodetrustServer]:
    workdir = tmp_path_factory.mktemp("nodetrust-dashboard")
    demo_device(workdir / "data", "SN-SEED", workdir / "seed")
    with start_nodetrust(workdir) as srv:
        yield srv


def remote_cli(server: NodetrustServer, *args: str, token_file: Path | None = None,
               url: str | None = None, ok: bool = True) -> Any:
    """`nodetrust --server-admin URL ...` from an empty working dir, no data-dir access
    beyond the token and root it is given."""
    proc = subprocess.run(
        [*nodetrust_cli(), "--server-admin", url or server.admin_url,
         "--admin-token-file", str(token_file or server.data_dir / "admin.token"),
         "--admin-ca", str(server.ca_bundle), *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    if not ok:
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert proc.stderr.startswith("nodetrust: ") and "Traceback" not in proc.stderr
        return proc.stderr
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return json.loads(proc.stdout) if "--json" in args else proc.stdout


def browse(url: str, profile: Path, *extra: str) -> str:
    """Headless Chromium: load `url` (following redirects, running the page's script) and
    return what --dump-dom prints, or "" for --screenshot runs."""
    binary = chromium()
    assert binary is not None
    proc = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--ignore-certificate-errors",  # the nodetrust root, loopback
         f"--user-data-dir={profile}", "--window-size=1280,1800", *extra, url],
        capture_output=True, text=True, timeout=BROWSER_TIMEOUT, stdin=subprocess.DEVNULL,
        check=False, cwd=profile)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def text_of(fragment: str) -> str:
    """Visible text, roughly: tags out, entities decoded, whitespace folded."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", fragment))).strip()


def section(dom: str, section_id: str) -> str:
    m = re.search(rf'<section id="{section_id}".*?</section>', dom, re.DOTALL)
    assert m, f"no section {section_id}"
    return m.group(0)


def test_remote_cli_and_dashboard_show_what_the_store_holds(server: NodetrustServer,
                                                            tmp_path: Path) -> None:
    if chromium() is None:
        pytest.skip("chromium is not installed (scripts/setup installs Debian's chromium)")
    for dev in ("DASH-1", "DASH-2"):
        cert, key = demo_device(server.data_dir, dev, tmp_path / dev)
        enroll(server, cert, key, tmp_path / dev / "node")

    # The CLI over the admin API: same commands, same --json, what it changed.
    out = remote_cli(server, "nodes", "set-owner", "dash-1", "team-edge", "--json")
    assert out == {"node": "dash-1", "owner": "team-edge", "previous_owner": None}
    remote_cli(server, "nodes", "set-owner", "dash-2", "<b>night shift</b>")
    remote_cli(server, "nodes", "label", "dash-1", "site=lyon")
    rows = {r["node"]: r for r in remote_cli(server, "nodes", "list", "--json")}
    assert rows["dash-1"]["owner"] == "team-edge" and rows["dash-1"]["labels"] == "site=lyon"
    table = remote_cli(server, "nodes", "list", "--owner", "team-edge")
    assert table.splitlines()[0].split()[:3] == ["NODE", "STATUS", "OWNER"]
    assert "dash-1" in table and "dash-2" not in table
    soon = remote_cli(server, "nodes", "list", "--expiring-within", "25h", "--json")
    assert {"dash-1", "dash-2"} <= {r["node"] for r in soon}
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token\n")
    assert "refused the token (401)" in remote_cli(server, "nodes", "list", token_file=wrong,
                                                   ok=False)
    down = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    assert "cannot reach the admin API" in remote_cli(server, "nodes", "list", url=down, ok=False)

    # What a person sees: log in with the one-shot token URL, land on the dashboard.
    token = urllib.parse.quote(server.admin_token, safe="")
    login = f"{server.admin_url}/admin/login?token={token}"
    profile = tmp_path / "chromium"
    profile.mkdir()
    dom = browse(login, profile, "--dump-dom")
    assert "<h2>Nodes" in dom, dom[:2000]
    nodes = section(dom, "nodes")
    row_texts = {m.group(1): text_of(m.group(0)) for m in re.finditer(
        r'<tr class="node[^"]*" data-status="[^"]*"><td data-value="([^"]+)".*?</tr>', nodes, re.DOTALL)}
    assert {"dash-1", "dash-2"} <= set(row_texts)
    assert "team-edge" in row_texts["dash-1"] and "site=lyon" in row_texts["dash-1"]
    assert "<b>night shift</b>" in row_texts["dash-2"]  # shown as text, never as markup
    assert "&lt;b&gt;night shift&lt;/b&gt;" in nodes and "<b>night shift" not in nodes
    expires = {n: cert_expiry(server, n) for n in ("dash-1", "dash-2")}
    for node, when in expires.items():
        assert f"{when} UTC" in row_texts[node] and "active" in row_texts[node]
    assert re.search(r'id="node-count">\d+ of \d+ nodes<', nodes)
    assert 'class="interactive"' in nodes  # the sorting/filtering script ran
    chart = section(dom, "expiry-chart")
    total = int(re.search(r'data-total="(\d+)"', chart).group(1))  # type: ignore[union-attr]
    bars = [int(n) for n in re.findall(r'<rect class="bar[^"]*" data-count="(\d+)"', chart)]
    assert total == sum(bars) >= 2
    metrics = https_get_with_token(server, "/metrics")
    assert f'nodetrust_certificates_expiring{{within="7d"}} {total}' in metrics
    assert "Expiry watch" in dom and "Recent revocations" in dom

    shot = tmp_path / "dashboard.png"
    browse(login, profile, f"--screenshot={shot}")
    assert shot.stat().st_size > 10_000
    if keep := os.environ.get("NODETRUST_E2E_ARTIFACTS"):  # for a person to look at
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "dashboard.png")


def cert_expiry(server: NodetrustServer, node: str) -> str:
    shown = remote_cli(server, "nodes", "show", node, "--json")
    return str(shown["expires"]).replace("T", " ")[:16]


def https_get_with_token(server: NodetrustServer, path: str) -> str:
    ctx = ssl.create_default_context(cafile=str(server.ca_bundle))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ctx))
    req = urllib.request.Request(server.admin_url + path,
                                 headers={"Authorization": f"Bearer {server.admin_token}"})
    with opener.open(req, timeout=10) as resp:
        return str(resp.read().decode())
