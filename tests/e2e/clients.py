"""Stock ACME clients (certbot from the virtualenv, Debian's lego) run as subprocesses.

Each runner keeps all its state in one temporary directory, trusts only the server's own CA
(`REQUESTS_CA_BUNDLE`, `SSL_CERT_FILE`, `LEGO_CA_CERTIFICATES`), has a timeout, and on failure
raises with the command, its output, the client's own log and the server's log tail.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import PolicyBuilder, Store

from acme_servers import AcmeServer, PrivateKey

CLIENT_TIMEOUT = 120.0  # seconds per client invocation
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class ClientFailed(AssertionError):
    pass


@dataclass
class ClientRun:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def client_env(server: AcmeServer) -> dict[str, str]:
    """The environment for a client: trust the server's CA only, no proxies.

    The machine sets SSL_CERT_FILE / REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE to the system bundle;
    left alone, certbot (requests) and lego (Go) would reject the server's certificate.
    """
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    bundle = str(server.ca_bundle)
    env.update(
        REQUESTS_CA_BUNDLE=bundle,
        SSL_CERT_FILE=bundle,
        CURL_CA_BUNDLE=bundle,
        LEGO_CA_CERTIFICATES=bundle,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    return env


def run_client(
    args: list[str],
    server: AcmeServer,
    *,
    cwd: Path,
    extra_log: Path | None = None,
    timeout: float = CLIENT_TIMEOUT,
) -> ClientRun:
    """Run a client; raise ClientFailed (with everything needed to debug) unless it exits 0."""
    start = time.monotonic()
    try:
        proc = subprocess.run(
            args, env=client_env(server), cwd=cwd, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        out = _text(exc.stdout)
        err = _text(exc.stderr)
        raise ClientFailed(
            _report(args, f"timed out after {timeout}s", out, err, extra_log, server)
        ) from None
    run = ClientRun(args, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)
    if proc.returncode != 0:
        raise ClientFailed(
            _report(args, f"exit {proc.returncode}", proc.stdout, proc.stderr, extra_log, server)
        )
    return run


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _report(
    args: list[str], what: str, out: str, err: str, extra_log: Path | None, server: AcmeServer
) -> str:
    parts = [
        f"{' '.join(args)}\n=> {what}",
        f"--- stdout ---\n{out[-6000:]}",
        f"--- stderr ---\n{err[-8000:]}",
    ]
    if extra_log is not None and extra_log.exists():
        parts.append(f"--- {extra_log} ---\n{extra_log.read_text(errors='replace')[-8000:]}")
    parts.append(f"--- {server.name} log ({server.log_path}) ---\n{server.log_tail()}")
    return "\n".join(parts)


# --------------------------------------------------------------------------- certificates


@dataclass
class IssuedCert:
    """What a client wrote to disk: leaf, the intermediates it got, and the leaf's key."""

    leaf: x509.Certificate
    intermediates: list[x509.Certificate]
    key: PrivateKey
    cert_path: Path
    key_path: Path

    @property
    def serial(self) -> int:
        return self.leaf.serial_number

    def bundle_pem(self) -> bytes:
        """Leaf then intermediates, PEM (the shape lego keeps in <domain>.crt)."""
        certs = [self.leaf, *self.intermediates]
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def dns_names(self) -> list[str]:
        san = self.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return sorted(san.get_values_for_type(x509.DNSName))

    def verify(self, issuer_roots: Path, name: str) -> list[x509.Certificate]:
        """Build and verify the chain to `issuer_roots` as a TLS server for `name`."""
        roots = x509.load_pem_x509_certificates(issuer_roots.read_bytes())
        verifier = (
            PolicyBuilder()
            .store(Store(roots))
            .time(datetime.datetime.now(datetime.UTC))
            .build_server_verifier(x509.DNSName(name))
        )
        return verifier.verify(self.leaf, self.intermediates)


def load_issued(bundle_path: Path, key_path: Path, chain_path: Path | None = None) -> IssuedCert:
    """`bundle_path` holds the leaf first (optionally followed by intermediates);
    `chain_path`, if given, holds the intermediates."""
    certs = x509.load_pem_x509_certificates(bundle_path.read_bytes())
    intermediates = certs[1:]
    if chain_path is not None:
        intermediates = x509.load_pem_x509_certificates(chain_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise TypeError(f"{key_path}: unexpected key type {type(key).__name__}")
    return IssuedCert(certs[0], intermediates, key, bundle_path, key_path)


def days_left(cert: x509.Certificate) -> int:
    return (cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).days


# --------------------------------------------------------------------------- certbot


def certbot_binary() -> str | None:
    venv = Path(sys.executable).with_name("certbot")
    return str(venv) if venv.exists() else shutil.which("certbot")


class Certbot:
    """certbot with --standalone http-01 on the server's http_port; state under `workdir`."""

    def __init__(self, server: AcmeServer, workdir: Path) -> None:
        binary = certbot_binary()
        if binary is None:
            raise FileNotFoundError("certbot not found next to the interpreter or on PATH")
        self.binary = binary
        self.server = server
        self.workdir = workdir
        self.config_dir = workdir / "config"
        self.logs_dir = workdir / "logs"
        for d in (self.config_dir, workdir / "work", self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)

    def _common(self) -> list[str]:
        return [
            "--server", self.server.directory_url,
            "--config-dir", str(self.config_dir),
            "--work-dir", str(self.workdir / "work"),
            "--logs-dir", str(self.logs_dir),
            "--non-interactive",
        ]

    def _standalone(self) -> list[str]:
        return [
            "--standalone",
            "--preferred-challenges", "http-01",
            "--http-01-port", str(self.server.http_port),
            "--http-01-address", "127.0.0.1",
        ]

    def run(self, *args: str) -> ClientRun:
        return run_client(
            [self.binary, *args, *self._common()], self.server, cwd=self.workdir,
            extra_log=self.logs_dir / "letsencrypt.log",
        )

    def certonly(self, domain: str) -> IssuedCert:
        self.run(
            "certonly", *self._standalone(), "--agree-tos", "--register-unsafely-without-email",
            "-d", domain,
        )
        return self.issued(domain)

    def renew(self, domain: str) -> IssuedCert:
        # --no-random-sleep-on-renew is not in --help but exists; without it a
        # non-interactive renew sleeps up to 8 minutes. The standalone flags are given
        # again (they would also be read from the renewal config).
        self.run("renew", "--force-renewal", "--no-random-sleep-on-renew", *self._standalone())
        return self.issued(domain)

    def revoke(
        self, cert: IssuedCert, reason: str | None = None, by_cert_key: bool = False
    ) -> ClientRun:
        """Revoke with the account key, or (by_cert_key) with a JWS signed by the certificate's
        own key (`--key-path`). --no-delete-after-revoke keeps the files for inspection."""
        args = ["revoke", "--cert-path", str(cert.cert_path), "--no-delete-after-revoke"]
        if reason is not None:
            args += ["--reason", reason]
        if by_cert_key:
            args += ["--key-path", str(cert.key_path)]
        return self.run(*args)

    def issued(self, domain: str) -> IssuedCert:
        live = self.config_dir / "live" / domain
        return load_issued(live / "cert.pem", live / "privkey.pem", chain_path=live / "chain.pem")


# --------------------------------------------------------------------------- lego


def lego_binary() -> str | None:
    return shutil.which("lego")


class Lego:
    """lego (4.9.1 flags) with its built-in http-01 or tls-alpn-01 solver on the server's
    ports; state under `workdir`; one account (email) per instance."""

    def __init__(self, server: AcmeServer, workdir: Path, email: str = "a@b.test") -> None:
        binary = lego_binary()
        if binary is None:
            raise FileNotFoundError("lego not found on PATH (Debian package `lego`)")
        self.binary = binary
        self.server = server
        self.workdir = workdir
        self.email = email
        self.eab: tuple[str, str] | None = None  # (kid, hmac key) for --eab
        workdir.mkdir(parents=True, exist_ok=True)

    def _global(self, domain: str, challenge: str) -> list[str]:
        # lego's options are global: they go before the command, and renew/revoke need
        # the same --server/--path/--email/--domains (and solver, for renew).
        args = [
            "--server", self.server.directory_url,
            "--email", self.email,
            "--accept-tos",
            "--path", str(self.workdir),
            "--domains", domain,
        ]
        if self.eab is not None:
            args += ["--eab", "--kid", self.eab[0], "--hmac", self.eab[1]]
        if challenge == "http":
            args += ["--http", "--http.port", f"127.0.0.1:{self.server.http_port}"]
        elif challenge == "tls":
            args += ["--tls", "--tls.port", f"127.0.0.1:{self.server.tls_port}"]
        elif challenge != "none":
            raise ValueError(f"unknown challenge {challenge!r}")
        return args

    def run_lego(self, domain: str, challenge: str, *command: str) -> ClientRun:
        return run_client(
            [self.binary, *self._global(domain, challenge), *command], self.server, cwd=self.workdir
        )

    def obtain(self, domain: str, challenge: str = "http") -> IssuedCert:
        self.run_lego(domain, challenge, "run")
        return self.issued(domain)

    def renew(self, domain: str, challenge: str = "http", days: int | None = None) -> IssuedCert:
        """Renew now: --days above the certificate's remaining lifetime forces it (lego 4.9.1
        has no --force); --no-random-sleep skips the up-to-8-minute jitter."""
        if days is None:
            days = max(999, days_left(self.issued(domain).leaf) + 2)
        self.run_lego(domain, challenge, "renew", "--days", str(days), "--no-random-sleep")
        return self.issued(domain)

    def revoke(self, domain: str, reason: int | None = None) -> ClientRun:
        """Revoke certificates/<domain>.crt with the account key; --keep leaves the files."""
        args = ["revoke", "--keep"]
        if reason is not None:
            args += ["--reason", str(reason)]
        return self.run_lego(domain, "none", *args)

    def cert_path(self, domain: str) -> Path:
        return self.workdir / "certificates" / f"{domain}.crt"

    def issued(self, domain: str) -> IssuedCert:
        certs = self.workdir / "certificates"
        # <domain>.crt is the leaf followed by the issuer (bundle); .issuer.crt the issuer.
        return load_issued(
            certs / f"{domain}.crt",
            certs / f"{domain}.key",
            chain_path=certs / f"{domain}.issuer.crt",
        )
