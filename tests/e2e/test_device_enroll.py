"""device-attest-01 end to end: a demo bootstrap certificate buys an operational certificate,
through `nodetrust enroll` and through stock certbot with the nodetrust plugin.

The server's data dir holds the demo manufacturer root, so `nodetrust demo device` runs on
it before the server starts (the default conf trusts that folder at start and on SIGHUP).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from acme_servers import NodetrustServer, start_nodetrust
from clients import Certbot, ClientFailed, IssuedCert, certbot_binary, load_issued, run_client
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from nodetrust.ari import cert_id
from server import permanent_identifier
from server.identity import IdentitySettings, NodeIdentity, node_identity

pytestmark = pytest.mark.e2e

PLUGIN = "nodetrust-device-attest"
CLI_TIMEOUT = 60.0


def nodetrust_cli() -> list[str]:
    script = Path(sys.executable).with_name("nodetrust")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from server.cli.main import main; sys.exit(main())"]


def demo_device(data_dir: Path, device_id: str, out: Path, id_in: str = "serialNumber"
                ) -> tuple[Path, Path]:
    """`nodetrust demo device` as a newcomer runs it; returns (bootstrap.pem, bootstrap.key)."""
    proc = subprocess.run(
        [*nodetrust_cli(), "--json", "demo", "device", device_id, "--out", str(out),
         "--data-dir", str(data_dir), "--id-in", id_in],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL,
        check=False)
    assert proc.returncode == 0, f"demo device failed:\n{proc.stdout}\n{proc.stderr}"
    info = json.loads(proc.stdout)
    assert info["dns_name"] == identity(device_id).dns_name
    assert f"-d {info['dns_name']}" in info["certbot"]
    return Path(info["bootstrap_cert"]), Path(info["bootstrap_key"])


def identity(device_id: str) -> NodeIdentity:
    return node_identity(device_id, IdentitySettings())  # the shipped templates


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodetrustServer]:
    workdir = tmp_path_factory.mktemp("nodetrust-device")
    # Before start: the demo manufacturer root must be in the data dir when the server loads
    # its manufacturer roots. Later devices are minted under the same root.
    demo_device(workdir / "data", "SN-SEED", workdir / "seed")
    with start_nodetrust(workdir) as srv:
        yield srv


def enroll(server: NodetrustServer, cert: Path, key: Path, out: Path, *extra: str
           ) -> dict[str, object]:
    run = run_client(
        [*nodetrust_cli(), "enroll", "--json", "--server", server.directory_url,
         "--bootstrap-cert", str(cert), "--bootstrap-key", str(key), "--out", str(out),
         "--ca-bundle", str(server.ca_bundle), *extra],
        server, cwd=out.parent, timeout=CLI_TIMEOUT)
    result: dict[str, object] = json.loads(run.stdout)
    return result


def spki(key: object) -> bytes:
    public = key.public_key()  # type: ignore[attr-defined]
    return bytes(public.public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo))


def assert_operational(issued: IssuedCert, server: NodetrustServer, device_id: str,
                       bootstrap_key: Path) -> None:
    """SANs from the templates, chains to the server root, a key that is not the bootstrap's."""
    ident = identity(device_id)
    san = issued.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [ident.dns_name]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [ident.spiffe_id]
    assert permanent_identifier.from_certificate(issued.leaf) == [device_id]
    issued.verify(server.issuer_roots, ident.dns_name)
    boot_key = serialization.load_pem_private_key(bootstrap_key.read_bytes(), password=None)
    assert spki(issued.key) != spki(boot_key)


@pytest.mark.parametrize("id_in", ["serialNumber", "permanentIdentifier"])
def test_enroll_then_renew_by_ari(server: NodetrustServer, tmp_path: Path, id_in: str) -> None:
    device_id = f"SN-E2E-{id_in[:4].upper()}-0001"
    cert, key = demo_device(server.data_dir, device_id, tmp_path / "device", id_in)
    out = tmp_path / "node"

    first = enroll(server, cert, key, out)
    assert first["action"] == "enrolled" and first["device_id"] == device_id
    assert first["attested"] is True
    issued = load_issued(out / "node.pem", out / "node.key")
    assert issued.intermediates, "node.pem must hold the full chain"
    assert_operational(issued, server, device_id, key)
    for secret in ("node.key", "account.key"):
        assert (out / secret).stat().st_mode & 0o777 == 0o600, secret
    pem_before = (out / "node.pem").read_bytes()

    # A 24 h certificate issued a moment ago is not due: nothing changes on disk.
    not_due = enroll(server, cert, key, out, "--renew")
    assert not_due["action"] == "not-due"
    assert not_due["serial"] == f"{issued.serial:x}"
    assert (out / "node.pem").read_bytes() == pem_before

    renewed = enroll(server, cert, key, out, "--renew", "--force")
    assert renewed["action"] == "renewed"
    assert renewed["replaces"] == cert_id(issued.leaf)
    assert renewed["account"] == first["account"]  # account.key was reused
    again = load_issued(out / "node.pem", out / "node.key")
    assert again.serial != issued.serial
    assert spki(again.key) != spki(issued.key)  # a new operational key each time
    assert_operational(again, server, device_id, key)
    assert (out / "node.key").stat().st_mode & 0o777 == 0o600


def test_enroll_untrusted_manufacturer_is_one_clear_line(server: NodetrustServer,
                                                         tmp_path: Path) -> None:
    # A root in another data dir: the server has never heard of this manufacturer.
    cert, key = demo_device(tmp_path / "elsewhere", "SN-ROGUE-1", tmp_path / "device")
    with pytest.raises(ClientFailed) as exc:
        enroll(server, cert, key, tmp_path / "node")
    stderr = str(exc.value).split("--- stderr ---\n", 1)[1].split("\n---", 1)[0]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("nodetrust: device attestation refused: badAttestationStatement")
    assert not (tmp_path / "node" / "node.pem").exists()
    assert not (tmp_path / "node" / "node.key").exists()


def test_certbot_plugin_certonly_then_unattended_renew(server: NodetrustServer,
                                                       tmp_path: Path) -> None:
    if certbot_binary() is None:
        pytest.skip("certbot not installed in the virtualenv")
    names = [ep.name for ep in entry_points(group="certbot.plugins")]
    assert PLUGIN in names, (f"{PLUGIN} is not registered in certbot.plugins: add the entry "
                             "point to pyproject.toml and reinstall (pip install -e .)")
    device_id = "SN-E2E-CERTBOT-1"
    dns = identity(device_id).dns_name
    cert, key = demo_device(server.data_dir, device_id, tmp_path / "device")
    certbot = Certbot(server, tmp_path / "certbot")

    # Relative paths on purpose: the renewal conf must keep them absolute.
    certbot.run("certonly", "--authenticator", PLUGIN,
                f"--{PLUGIN}-cert", "../device/bootstrap.pem",
                f"--{PLUGIN}-key", "../device/bootstrap.key",
                "--agree-tos", "--register-unsafely-without-email", "-d", dns)
    first = certbot.issued(dns)
    assert_operational(first, server, device_id, key)

    conf = (certbot.config_dir / "renewal" / f"{dns}.conf").read_text()
    assert f"authenticator = {PLUGIN}" in conf
    assert f"nodetrust_device_attest_cert = {cert.resolve()}" in conf
    assert f"nodetrust_device_attest_key = {key.resolve()}" in conf

    # Unattended: no plugin flags, everything comes from the renewal conf.
    certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew")
    renewed = certbot.issued(dns)
    assert renewed.serial != first.serial
    assert_operational(renewed, server, device_id, key)
