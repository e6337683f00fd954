"""bench-gateway's processes: nodetrust-server (CA, revocation feed, ACME for the revocation
probe), the upstream (nginx `return 200`), the two systems under test (nodetrust-gateway and
nginx as an mTLS reverse proxy) and the load client certificate.

Everything binds 127.0.0.1 on free ports inside one temporary folder; every process is started
in its own session and stopped by its own pid.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .procs import ServerStartError, free_port, log_tail, spawn, stop_process, wait_https

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
TRUST_DOMAIN = "nodetrust.internal"  # the server's default SPIFFE trust domain
BENCH_DOMAIN = "bench.test"           # names the revocation probe enrolls over ACME

SERVER_CONFIG = """\
# Written by scripts/bench-gateway; throwaway.
[validation]
http_port = {http_port}
hosts = {{"*" = "127.0.0.1"}}

[rate_limits]
new_account_per_ip = 0
new_order_per_account = 0
requests_per_ip = 0

[attestation]
enabled = false
"""

GATEWAY_CONFIG = """\
# Written by scripts/bench-gateway; throwaway.
[gateway]
listen = "127.0.0.1:{port}"
upstream = "http://127.0.0.1:{upstream_port}"
cert = {cert}
key = {key}
client_ca = {ca}
access_log = {access_log}
upstream_pool_size = 256

[metrics]
listen = "127.0.0.1:{metrics_port}"

[revocation]
feed_url = "{feed_url}"
token_file = {token}
ca_file = {ca}
max_staleness = "30s"

[[routes]]
name = "nodes"
prefix = "/"
allow_spiffe = ["spiffe://{trust_domain}/node/*"]
allow_dns = ["*.{bench_domain}"]
"""

# The upstream both systems under test proxy to: as cheap as a local HTTP server gets.
UPSTREAM_NGINX = """\
# Written by scripts/bench-gateway; throwaway.
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "hello from upstream\\n";
        }}
    }}
}}
"""

# nginx as the incumbent mTLS reverse proxy: verifies the client certificate against the same
# root at the handshake, forwards identity headers, keeps a pool of upstream connections.
PROXY_NGINX = """\
# Written by scripts/bench-gateway; throwaway.
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    {access_log}
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_session_tickets on;
        ssl_conf_command NumTickets 1;  # as the gateway: one TLS 1.3 ticket per handshake
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-Client-Cert "Hash=$ssl_client_fingerprint;Subject=\\"$ssl_client_s_dn\\"";
            proxy_set_header X-Client-Serial $ssl_client_serial;
        }}
    }}
}}
"""


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)

    def tail(self, lines: int = 25) -> str:
        return f"--- {self.log}\n{log_tail(self.log, lines)}"


@dataclass
class Server:
    """A running nodetrust-server with its own data folder."""

    proc: Proc
    port: int
    http01_port: int
    data_dir: Path

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_root(self) -> Path:
        return self.data_dir / "ca" / "root.pem"

    @property
    def tls(self) -> tuple[Path, Path]:
        return self.data_dir / "tls" / "server.pem", self.data_dir / "tls" / "server.key"


@dataclass
class LoadCert:
    cert: Path   # leaf + intermediate
    key: Path
    serial: int
    spiffe_id: str


@dataclass
class Stack:
    """Everything one bench run starts; stop() ends it all (idempotent)."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def add(self, p: Proc) -> Proc:
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()


def _binary(name: str) -> str:
    venv = VENV_BIN / name
    if venv.exists():
        return str(venv)
    found = shutil.which(name)
    if found is None:
        raise ServerStartError(f"{name} not found (run ./scripts/setup)")
    return found


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if found is None:
        raise ServerStartError("nginx not found (run ./scripts/setup)")
    return found


def start_server(stack: Stack, http01_port: int, cpu: int | None) -> Server:
    d = stack.workdir / "server"
    data = d / "data"
    data.mkdir(parents=True)
    config = d / "server.toml"
    config.write_text(SERVER_CONFIG.format(http_port=http01_port))
    port = free_port()
    log = d / "server.log"
    proc = stack.add(Proc("nodetrust-server", spawn(
        [_binary("nodetrust-server"), "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
         "--config", str(config)], log, cpu=cpu), log))
    server = Server(proc, port, http01_port, data)
    wait_https(f"{server.base_url}/acme/directory", server.ca_root, [proc.proc], 30.0,
               "nodetrust-server", [log])
    return server


def issue_load_cert(server: Server, workdir: Path, node_id: str = "bench-load") -> LoadCert:
    """A client certificate from the server's own CA (server.ca.CertificateAuthority on its
    data folder), SPIFFE URI SAN as the server writes them. Not in the server's database: the
    load only needs the gateway to accept it (the revocation probe enrolls over ACME)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from server import pki_files
    from server.ca import CertificateAuthority

    ca = CertificateAuthority.load_or_create(server.data_dir / "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    spiffe = f"spiffe://{TRUST_DOMAIN}/node/{node_id}"
    issued = ca.issue(key.public_key(), dns_names=[f"{node_id}.nodes.{TRUST_DOMAIN}"],
                      uris=[spiffe], not_before=now - timedelta(minutes=1),
                      not_after=now + timedelta(hours=24))
    out = workdir / "client"
    out.mkdir(exist_ok=True)
    cert, keyf = out / f"{node_id}.pem", out / f"{node_id}.key"
    cert.write_bytes(issued.chain_pem)
    keyf.write_bytes(pki_files.private_key_pem(key))
    keyf.chmod(0o600)
    return LoadCert(cert, keyf, issued.serial, spiffe)


def _wait_tcp(port: int, procs: list[Proc], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.proc.poll() is not None:
                raise ServerStartError(f"{what} exited with {p.proc.returncode}\n{p.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerStartError(f"{what} not listening on {port} after {timeout}s\n"
                           + "\n".join(p.tail() for p in procs))


def start_nginx(stack: Stack, name: str, template: str, cpu: int | None, **values: object
                ) -> tuple[Proc, int]:
    d = stack.workdir / name
    (d / "tmp").mkdir(parents=True)
    port = free_port()
    conf = d / "nginx.conf"
    conf.write_text(template.format(dir=d, port=port, **values))
    log = d / "stdout.log"
    proc = stack.add(Proc(name, spawn([nginx_binary(), "-e", str(d / "error.log"), "-p", str(d),
                                       "-c", str(conf)], log, cpu=cpu), log))
    _wait_tcp(port, [proc], 15.0, name)
    return proc, port


def start_upstream(stack: Stack, cpu: int | None) -> tuple[Proc, int]:
    return start_nginx(stack, "upstream", UPSTREAM_NGINX, cpu)


def start_nginx_proxy(stack: Stack, server: Server, upstream_port: int, cpu: int | None,
                      access_log: bool) -> tuple[Proc, int]:
    d = stack.workdir / "nginx-proxy"
    cert, key = server.tls
    log_line = f"access_log {d}/access.log;" if access_log else "access_log off;"
    return start_nginx(stack, "nginx-proxy", PROXY_NGINX, cpu, upstream_port=upstream_port,
                       cert=cert, key=key, ca=server.ca_root, access_log=log_line)


def start_gateway(stack: Stack, server: Server, upstream_port: int, cpu: int | None,
                  access_log: bool, probe_cert: LoadCert, timeout: float = 30.0
                  ) -> tuple[Proc, int, int]:
    """nodetrust-gateway on a free port; returns (process, port, metrics port) once it answers
    200 (i.e. it has caught up with the revocation feed: before that it refuses with 503)."""
    d = stack.workdir / "gateway"
    d.mkdir()
    port, metrics_port = free_port(), free_port()
    cert, key = server.tls
    q = json.dumps  # TOML basic strings are JSON strings for these paths
    config = d / "gateway.toml"
    config.write_text(GATEWAY_CONFIG.format(
        port=port, upstream_port=upstream_port, cert=q(str(cert)), key=q(str(key)),
        ca=q(str(server.ca_root)), access_log=q(str(d / "access.log") if access_log else ""),
        metrics_port=metrics_port, feed_url=f"{server.base_url}/feed/revocations",
        token=q(str(server.data_dir / "feed.token")), trust_domain=TRUST_DOMAIN,
        bench_domain=BENCH_DOMAIN))
    log = d / "gateway.log"
    proc = stack.add(Proc("nodetrust-gateway", spawn(
        [_binary("nodetrust-gateway"), "--config", str(config), "--log-level", "WARNING"],
        log, cpu=cpu), log))
    ctx = ssl.create_default_context(cafile=str(server.ca_root))
    ctx.load_cert_chain(str(probe_cert.cert), str(probe_cert.key))
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise ServerStartError(f"nodetrust-gateway exited with {proc.proc.returncode}\n"
                                   + proc.tail())
        try:
            status = https_get_status(port, ctx)
            if status == 200:
                return proc, port, metrics_port
            last = f"HTTP {status}"
        except (OSError, ssl.SSLError) as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise ServerStartError(f"nodetrust-gateway not serving after {timeout}s ({last})\n"
                           + proc.tail())


def scrape_counter(metrics_port: int, series: str) -> float:
    """One series' value from the gateway's Prometheus text (0 when absent)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except (OSError, urllib.error.URLError):
        return 0.0
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def https_get_status(port: int, ctx: ssl.SSLContext, path: str = "/") -> int:
    """One GET on a fresh connection; the status code."""
    import http.client

    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()
