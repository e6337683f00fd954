"""Run nodetrust-server as a benchmark target.

LEAD: `start_nodetrust` below is the one place that knows how nodetrust is launched and
configured for the benchmark. Adjust NODETRUST_CONFIG / the argv when the server's CLI or
config keys settle; the rest of bench-enroll only needs the returned ServerHandle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .procs import ServerHandle, ServerStartError, free_port, spawn, wait_https

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------
# Config keys assumed (TOML). The http-01 validator must connect to the bench responder at
# 127.0.0.1:<http_port> for every name, without DNS (names are like w3-17.bench.test).
NODETRUST_CONFIG = """\
# Written by scripts/bench-enroll (scripts/benchlib/nodetrust.py); throwaway.
[validation]
http_port = {http_port}
hosts = {{"*" = "127.0.0.1"}}

# Pebble has no rate limits; switch nodetrust's off so long runs never see rateLimited.
[rate_limits]
new_account_per_ip = 0
new_order_per_account = 0
requests_per_ip = 0
"""
# device-attest mode only: the folder holding the bench manufacturer's root (one PEM per maker).
ATTESTATION_CONFIG = """
[attestation]
roots_dir = {roots_dir}
"""
# ---------------------------------------------------------------------------------------------


def _server_binary() -> str:
    venv_bin = REPO / ".venv" / "bin" / "nodetrust-server"
    if venv_bin.exists():
        return str(venv_bin)
    found = shutil.which("nodetrust-server")
    if found is None:
        raise ServerStartError("nodetrust-server not found (run ./scripts/setup)")
    return found


def start_nodetrust(
    workdir: Path, http01_port: int, server_cpu: int | None, helper_cpu: int | None = None,
    timeout: float = 30.0, roots_pem: bytes | None = None, roots_name: str = "bench-devices",
) -> ServerHandle:
    """Start `nodetrust-server --data-dir D --listen 127.0.0.1:P --config C` with a fresh data dir.

    Writes the config (NODETRUST_CONFIG), pins the server to server_cpu when given, waits until
    https://127.0.0.1:P/acme/directory answers with a certificate chaining to D/ca/root.pem,
    and returns the directory URL + CA path. helper_cpu is unused (no DNS helper needed).
    roots_pem (device-attest mode): written to <workdir>/roots/<roots_name>.pem and named by
    `[attestation] roots_dir`; without it the config is the http-01 one, unchanged.
    """
    del helper_cpu
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    data_dir.mkdir(exist_ok=True)
    config_path = workdir / "nodetrust.toml"
    config = NODETRUST_CONFIG.format(http_port=http01_port)
    if roots_pem is not None:
        roots_dir = workdir / "roots"
        roots_dir.mkdir(exist_ok=True)
        (roots_dir / f"{roots_name}.pem").write_bytes(roots_pem)
        config += ATTESTATION_CONFIG.format(roots_dir=json.dumps(str(roots_dir.resolve())))
    config_path.write_text(config)
    port = free_port()
    log_path = workdir / "nodetrust-server.log"
    proc = spawn(
        [
            _server_binary(), "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
            "--config", str(config_path),
        ],
        log_path, cpu=server_cpu,
    )
    handle = ServerHandle(
        name="nodetrust",
        directory_url=f"https://127.0.0.1:{port}/acme/directory",
        ca_path=data_dir / "ca" / "root.pem",
        procs=[proc],
        log_paths=[log_path],
    )
    try:
        wait_https(handle.directory_url, handle.ca_path, handle.procs, timeout, "nodetrust-server",
                   handle.log_paths)
    except BaseException:
        handle.stop()
        raise
    return handle
