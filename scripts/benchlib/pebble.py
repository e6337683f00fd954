"""Run Debian's Pebble (plus pebble-challtestsrv as its DNS) as a benchmark target.

Pebble resolves identifiers through DNS, so pebble-challtestsrv (shipped in the same Debian
package) answers A 127.0.0.1 for every name; its own challenge listeners are disabled because
the load generator serves http-01 itself. Pebble 2.4's in-memory store can deadlock under
concurrent load, so callers start a fresh instance for every run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .procs import ServerHandle, ServerStartError, free_port, spawn, stop_process, wait_https
from .tlsgen import write_localhost_tls

# Knobs of Debian's pebble 2.4 (from `strings $(which pebble) | grep PEBBLE_`):
# PEBBLE_VA_NOSLEEP, PEBBLE_VA_SLEEPTIME, PEBBLE_VA_ALWAYS_VALID, PEBBLE_WFE_NONCEREJECT,
# PEBBLE_AUTHZREUSE, PEBBLE_CHAIN_LENGTH, PEBBLE_WFE_ORDERS_PER_PAGE, PEBBLE_ALTERNATE_ROOTS.
PEBBLE_ENV = {
    "PEBBLE_VA_NOSLEEP": "1",  # no random 0-15 s sleep before each validation
    "PEBBLE_WFE_NONCEREJECT": "0",  # default rejects 5% of good nonces
    "PEBBLE_AUTHZREUSE": "0",  # default reuses valid authzs 50% of the time; always validate
}


def start_pebble(
    workdir: Path, http01_port: int, server_cpu: int | None, helper_cpu: int | None,
    timeout: float = 15.0,
) -> ServerHandle:
    """Start challtestsrv + Pebble in workdir; return once Pebble's directory answers.

    server_cpu pins Pebble itself; helper_cpu pins challtestsrv (it stands in for DNS, which a
    nodetrust run does not pay for, so it goes with the load generator).
    """
    for binary in ("pebble", "pebble-challtestsrv"):
        if shutil.which(binary) is None:
            raise ServerStartError(f"{binary} not found (Debian package 'pebble'; ./scripts/setup)")
    workdir.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = write_localhost_tls(workdir)
    acme_port, mgmt_port, tls_port = free_port(), free_port(), free_port()
    dns_port, dns_mgmt_port = free_port(), free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme_port}",
            "managementListenAddress": f"127.0.0.1:{mgmt_port}",
            "certificate": str(cert_path),
            "privateKey": str(key_path),
            "httpPort": http01_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    config_path = workdir / "pebble-config.json"
    config_path.write_text(json.dumps(config, indent=2))
    dns_log, pebble_log = workdir / "challtestsrv.log", workdir / "pebble.log"
    dns = spawn(
        [
            "pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
            "-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", "",
            "-tlsalpn01", "", "-management", f"127.0.0.1:{dns_mgmt_port}",
        ],
        dns_log, cpu=helper_cpu,
    )
    try:
        pebble = spawn(
            ["pebble", "-config", str(config_path), "-dnsserver", f"127.0.0.1:{dns_port}"],
            pebble_log, env=PEBBLE_ENV, cpu=server_cpu,
        )
    except OSError:
        stop_process(dns)
        raise
    handle = ServerHandle(
        name="pebble",
        directory_url=f"https://127.0.0.1:{acme_port}/dir",
        ca_path=ca_path,
        procs=[pebble, dns],
        log_paths=[pebble_log, dns_log],
    )
    try:
        wait_https(handle.directory_url, ca_path, handle.procs, timeout, "pebble", handle.log_paths)
    except BaseException:
        handle.stop()
        raise
    return handle
