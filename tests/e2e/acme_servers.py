"""ACME servers the end-to-end tests run stock clients against.

Every server is reached through one `AcmeServer` object, so switching the tests between Pebble
(the reference test CA, used to prove the harness) and nodetrust is a matter of one fixture:
`start_server(target, workdir)`, target from `NODETRUST_E2E_TARGET` (`pebble` | `nodetrust`).

Servers bind to 127.0.0.1 only and use free ports. Nothing here sleeps: readiness is a
condition polled under a deadline, with the server process's own exit as the poll interval.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

TARGETS = ("pebble", "nodetrust")
# Flip to "nodetrust" once `nodetrust-server` starts and issues (the lead's call).
DEFAULT_TARGET = "nodetrust"
TARGET_ENV = "NODETRUST_E2E_TARGET"

START_TIMEOUT = 20.0  # seconds for a server to answer its directory URL


def selected_target() -> str:
    target = os.environ.get(TARGET_ENV, DEFAULT_TARGET).strip().lower()
    if target not in TARGETS:
        raise ValueError(f"{TARGET_ENV}={target!r}: expected one of {', '.join(TARGETS)}")
    return target


class RestartUnsupported(NotImplementedError):
    """The server cannot restart with its data (Pebble keeps everything in memory)."""


# --------------------------------------------------------------------------- the abstraction


@dataclass
class AcmeServer:
    """One running ACME server as the tests see it."""

    name: str
    directory_url: str  # https://127.0.0.1:PORT/dir (nodetrust: .../acme/directory)
    ca_bundle: Path  # PEM trusted for the server's own HTTPS
    issuer_roots: Path  # PEM root(s) that issued certificates chain to
    http_port: int  # the VA fetches http-01 here: clients must listen on 127.0.0.1:http_port
    tls_port: int  # the VA connects here for tls-alpn-01
    log_path: Path  # the server process's stdout+stderr
    can_restart: bool = False  # restart() keeps accounts, orders and certificates

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        raise NotImplementedError

    def is_revoked(self, cert: x509.Certificate, key: PrivateKey | None = None) -> bool:
        """Does the server consider `cert` revoked? `key` is the certificate's private key;
        implementations that probe over ACME need it."""
        raise NotImplementedError

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(no server log: {exc})"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the usual bind-0 race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """n distinct free ports (held open together so they cannot collide with each other)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def https_get(url: str, cafile: Path, timeout: float = 5.0) -> bytes:
    ctx = ssl.create_default_context(cafile=str(cafile))
    # Never route the test traffic through a proxy the environment may define.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
    )
    with opener.open(url, timeout=timeout) as resp:
        return bytes(resp.read())


def wait_for_directory(
    proc: subprocess.Popen[bytes],
    url: str,
    cafile: Path,
    log_path: Path,
    timeout: float = START_TIMEOUT,
) -> None:
    """Poll `url` until it returns a JSON directory; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if cafile.exists():
            try:
                directory = json.loads(https_get(url, cafile, timeout=2.0))
                if "newOrder" in directory:
                    return
                last_error = ValueError(f"not an ACME directory: {directory!r}")
            except (OSError, ValueError, ssl.SSLError) as exc:
                last_error = exc
        # The wait doubles as the poll interval: returns at once if the server died.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)
        if proc.returncode is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode} before {url} answered\n"
                f"--- server log ---\n{_tail(log_path)}"
            )
    raise TimeoutError(
        f"{url} did not answer within {timeout}s (last error: {last_error!r})\n"
        f"--- server log ---\n{_tail(log_path)}"
    )


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _tail(path: Path, chars: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(unreadable: {exc})"


def make_https_material(
    directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for `hosts`: returns (ca.pem, cert.pem, key.pem).

    Debian's pebble package ships no certificates for its own HTTPS endpoint.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "e2e test HTTPS CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


# --------------------------------------------------------------------------- a tiny DNS server


class StubDns:
    """UDP DNS responder on 127.0.0.1: A queries for names matching `hosts` ("*" = any name)
    get that IPv4 address; everything else gets an empty NOERROR answer (so no AAAA, and a
    VA never tries ::1). Enough for Pebble's `-dnsserver`; runs in a daemon thread."""

    def __init__(self, hosts: Mapping[str, str] | None = None) -> None:
        self.hosts = {k.lower().rstrip("."): v for k, v in (hosts or {"*": "127.0.0.1"}).items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.queries: list[tuple[str, int]] = []
        self._thread = threading.Thread(target=self._serve, name="e2e-stub-dns", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()  # recvfrom raises OSError and the thread ends
        self._thread.join(timeout=5)

    def _lookup(self, name: str) -> str | None:
        return self.hosts.get(name, self.hosts.get("*"))

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            with contextlib.suppress(Exception):  # a malformed query is just dropped
                self.sock.sendto(self._answer(data), peer)

    def _answer(self, query: bytes) -> bytes:
        qid, flags, qdcount = struct.unpack("!HHH", query[:6])
        pos, labels = 12, []
        while (length := query[pos]) != 0:
            labels.append(query[pos + 1 : pos + 1 + length].decode("ascii"))
            pos += 1 + length
        qtype, _qclass = struct.unpack("!HH", query[pos + 1 : pos + 5])
        question = query[12 : pos + 5]
        name = ".".join(labels).lower()
        self.queries.append((name, qtype))
        answers = b""
        ancount = 0
        addr = self._lookup(name) if qtype == 1 else None  # 1 = A
        if addr is not None:
            answers = (
                b"\xc0\x0c"  # pointer to the question name
                + struct.pack("!HHIH", 1, 1, 60, 4)
                + socket.inet_aton(addr)
            )
            ancount = 1
        rd = flags & 0x0100
        header = struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | 0x0080, qdcount, ancount, 0, 0)
        return header + question + answers


# --------------------------------------------------------------------------- Pebble


@dataclass
class PebbleServer(AcmeServer):
    management_url: str = ""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _dns: StubDns | None = field(default=None, repr=False)

    def stop(self) -> None:
        stop_process(self._proc)
        if self._dns is not None:
            self._dns.close()
            self._dns = None

    def restart(self) -> None:
        raise RestartUnsupported(
            "Pebble keeps accounts, orders and certificates in memory and makes a new CA "
            "on every start: it cannot restart with its data"
        )

    def cert_status(self, cert: x509.Certificate) -> dict[str, object]:
        """Pebble's management API view of a certificate (Status "Valid" | "Revoked", Reason)."""
        url = f"{self.management_url}/cert-status-by-serial/{cert.serial_number:x}"
        result: dict[str, object] = json.loads(https_get(url, self.ca_bundle))
        return result

    def is_revoked(self, cert: x509.Certificate, key: PrivateKey | None = None) -> bool:
        return self.cert_status(cert).get("Status") == "Revoked"


def pebble_binary() -> str | None:
    return shutil.which("pebble")


@contextlib.contextmanager
def start_pebble(
    workdir: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[PebbleServer]:
    """A fresh Pebble (new CA, empty store) on free 127.0.0.1 ports, answering DNS for every
    name with 127.0.0.1 through a stub resolver. Validation sleeps off, nonce rejection off,
    no authorization reuse, 90-day certificates."""
    binary = pebble_binary()
    if binary is None:
        raise FileNotFoundError("pebble is not installed (Debian package `pebble`)")
    workdir.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = make_https_material(workdir / "https")
    listen, mgmt, http_port, tls_port = free_ports(4)
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{listen}",
            "managementListenAddress": f"127.0.0.1:{mgmt}",
            "certificate": str(cert_path),
            "privateKey": str(key_path),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            # 90 days (Pebble's default is 5 years): `lego renew --days 999` then renews.
            "certificateValidityPeriod": 90 * 24 * 3600,
        }
    }
    config_path = workdir / "pebble-config.json"
    config_path.write_text(json.dumps(config, indent=2))
    env = dict(os.environ)
    env.update(
        {
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",  # default 5 %: would make runs nondeterministic
            "PEBBLE_AUTHZREUSE": "0",  # every order validates again (renewals too)
        }
    )
    env.update(extra_env or {})
    dns = StubDns({"*": "127.0.0.1"})
    log_path = workdir / "pebble.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, "-config", str(config_path), "-dnsserver", dns.address],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=workdir,
        )
    server = PebbleServer(
        name="pebble",
        directory_url=f"https://127.0.0.1:{listen}/dir",
        ca_bundle=ca_path,
        issuer_roots=workdir / "issuer-roots.pem",
        http_port=http_port,
        tls_port=tls_port,
        log_path=log_path,
        can_restart=False,
        management_url=f"https://127.0.0.1:{mgmt}",
        _proc=proc,
        _dns=dns,
    )
    try:
        wait_for_directory(proc, server.directory_url, ca_path, log_path)
        server.issuer_roots.write_bytes(https_get(f"{server.management_url}/roots/0", ca_path))
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- nodetrust

NODETRUST_CONFIG_TEMPLATE = """\
# Written by tests/e2e/acme_servers.py:start_nodetrust. Keys assumed by the harness;
# the server owns the schema.
[validation]
http_port = {http_port}
tls_port = {tls_port}
hosts = {{ "*" = "127.0.0.1" }}

[attestation]
demo_manufacturer = true
roots_dir = "manufacturer-roots"
bootstrap_listen = "127.0.0.1:{bootstrap_port}"

[admin]
listen = "127.0.0.1:{admin_port}"
token_in_url = true   # headless Chromium logs in with /admin/login?token=... (tests only)
"""


@dataclass
class NodetrustServer(AcmeServer):
    command: list[str] = field(default_factory=list)
    data_dir: Path = Path()
    bootstrap_url: str = ""
    admin_url: str = ""  # https://127.0.0.1:PORT: admin API, /metrics, dashboard at /admin/
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def launch(self) -> None:
        # Append, so a restart keeps the first run's log.
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.data_dir.parent,
            )
        wait_for_directory(self._proc, self.directory_url, self.ca_bundle, self.log_path)

    def stop(self) -> None:
        stop_process(self._proc)

    def restart(self) -> None:
        """Stop and start again on the same data dir, port and config."""
        self.stop()
        self.launch()

    def is_revoked(self, cert: x509.Certificate, key: PrivateKey | None = None) -> bool:
        """Read the CRL named in the certificate's CRL distribution point, as any relying
        party would; no side effects."""
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        url = cdp[0].full_name[0].value  # type: ignore[index]
        crl = x509.load_der_x509_crl(https_get(url, self.ca_bundle))
        return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def nodetrust_command(data_dir: Path, listen: str, config: Path) -> list[str]:
    script = Path(sys.executable).with_name("nodetrust-server")
    base = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from server.main import main; sys.exit(main())"
    ]
    return [*base, "--data-dir", str(data_dir), "--listen", listen, "--config", str(config)]


@contextlib.contextmanager
def start_nodetrust(workdir: Path, extra_config: str = "") -> Iterator[NodetrustServer]:
    """nodetrust-server on a fresh data dir and free ports; yields once the directory answers.

    Assumes (the lead aligns): CLI `--data-dir D --listen 127.0.0.1:P --config C`; directory at
    https://127.0.0.1:P/acme/directory; the root at D/ca/root.pem, which also anchors the
    server's own HTTPS certificate (valid for IP 127.0.0.1); config keys as in
    NODETRUST_CONFIG_TEMPLATE.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    listen, http_port, tls_port, bootstrap_port, admin_port = free_ports(5)
    config_path = workdir / "nodetrust-e2e.toml"
    (workdir / "manufacturer-roots").mkdir(exist_ok=True)
    config_path.write_text(NODETRUST_CONFIG_TEMPLATE.format(
        http_port=http_port, tls_port=tls_port, bootstrap_port=bootstrap_port,
        admin_port=admin_port) + extra_config)
    root = data_dir / "ca" / "root.pem"
    server = NodetrustServer(
        name="nodetrust",
        directory_url=f"https://127.0.0.1:{listen}/acme/directory",
        ca_bundle=root,
        issuer_roots=root,
        http_port=http_port,
        tls_port=tls_port,
        log_path=workdir / "nodetrust.log",
        can_restart=True,
        command=nodetrust_command(data_dir, f"127.0.0.1:{listen}", config_path),
        data_dir=data_dir,
        bootstrap_url=f"https://127.0.0.1:{bootstrap_port}/bootstrap/eab",
        admin_url=f"https://127.0.0.1:{admin_port}",
    )
    try:
        server.launch()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def start_server(target: str, workdir: Path) -> Iterator[AcmeServer]:
    starter = {"pebble": start_pebble, "nodetrust": start_nodetrust}[target]
    with starter(workdir) as server:
        yield server


# --------------------------------------------------------------------------- probes


def revoked_via_acme(server: AcmeServer, cert: x509.Certificate, key: PrivateKey) -> bool:
    """Revoke `cert` again with a JWS signed by its own key: True if the server answers
    alreadyRevoked, False if the revocation succeeds (it was not revoked before)."""
    import josepy as jose  # imported here: only the probe needs acme/josepy
    from acme import client as acme_client
    from acme import messages

    if isinstance(key, rsa.RSAPrivateKey):
        jwk: jose.JWK = jose.JWKRSA(key=key)
        alg = jose.RS256
    else:
        jwk = jose.JWKEC(key=key)
        alg = {256: jose.ES256, 384: jose.ES384, 521: jose.ES512}[key.curve.key_size]
    # verify_ssl is passed to requests as `verify`, which also takes a CA bundle path.
    verify: bool = str(server.ca_bundle)  # type: ignore[assignment]
    net = acme_client.ClientNetwork(key=jwk, alg=alg, verify_ssl=verify, user_agent="nodetrust-e2e")
    net.session.trust_env = False  # no proxies, no REQUESTS_CA_BUNDLE from the environment
    directory = acme_client.ClientV2.get_directory(server.directory_url, net)
    acme = acme_client.ClientV2(directory, net)
    try:
        acme.revoke(cert, 0)
    except messages.Error as err:
        if err.code == "alreadyRevoked":
            return True
        raise
    return False
