"""`nodetrust enroll` and `nodetrust demo device` pieces that need no server."""
from __future__ import annotations

import base64
import datetime as dt
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from acme import client as acme_client
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nodetrust import files
from nodetrust.acme_errors import one_line
from nodetrust.ari import cert_id
from nodetrust.bootstrap import open_bootstrap
from nodetrust.enroll import IDENTIFIER_PERMANENT, NewOrder, make_csr
from server import permanent_identifier
from server.cli.main import main
from server.csr import check_csr
from server.ra import ari as server_ari


def _cert_with_serial(serial: int) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))


@pytest.mark.parametrize("serial", [1, 0x7F, 0x80, 0xFF00, (1 << 127) | 5, (1 << 158) - 1])
def test_ari_id_agrees_with_server_and_acme(serial: int) -> None:
    cert = _cert_with_serial(serial)
    ours = cert_id(cert)
    assert ours == server_ari.cert_id(cert)
    assert ours == acme_client._renewal_info_path_component(cert)
    serial_octets = base64.urlsafe_b64decode(ours.split(".")[1] + "==")
    assert serial_octets[0] & 0x80 == 0  # a positive DER INTEGER


def test_new_order_wire_shape() -> None:
    ident = messages.Identifier(typ=IDENTIFIER_PERMANENT, value="SN-1")
    assert json.loads(NewOrder(identifiers=[ident]).json_dumps()) == {
        "identifiers": [{"type": "permanent-identifier", "value": "SN-1"}]}
    with_replaces = json.loads(NewOrder(identifiers=[ident], replaces="aki.serial").json_dumps())
    assert with_replaces["replaces"] == "aki.serial"
    # The server's answer names the same identifier type: it must parse.
    order = messages.Order.from_json({"status": "pending", "identifiers": [
        {"type": "permanent-identifier", "value": "SN-1"}], "authorizations": [],
        "finalize": "https://ca.test/f"})
    assert order.identifiers[0].typ == IDENTIFIER_PERMANENT


def test_csr_names_nothing_and_passes_server_checks() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key)
    checked = check_csr(csr.public_bytes(serialization.Encoding.DER),
                        allowed_keys=("ec-p256",))
    assert checked.identifiers == []


def test_keys_are_born_0600_and_reused(tmp_path: Path) -> None:
    key, created = files.load_or_create_ec_key(tmp_path / "account.key")
    assert created and (tmp_path / "account.key").stat().st_mode & 0o777 == 0o600
    again, created = files.load_or_create_ec_key(tmp_path / "account.key")
    assert not created and again.private_numbers() == key.private_numbers()
    assert [p.name for p in tmp_path.iterdir()] == ["account.key"]  # no temp files left


def test_problem_documents_become_one_line() -> None:
    err = messages.Error(typ=messages.ERROR_PREFIX + "badAttestationStatement",
                         detail="signature: does not verify\nwith the x5c leaf key")
    assert one_line(err, "https://ca.test") == (
        "the server refused: badAttestationStatement: signature: does not verify with the x5c "
        "leaf key")


# ---------------------------------------------------------------- the CLI, offline


def _demo(tmp_path: Path, device_id: str, *extra: str,
          capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    rc = main(["--json", "demo", "device", device_id, "--out", str(tmp_path / "dev"),
               "--data-dir", str(tmp_path / "data"), *extra])
    out = capsys.readouterr().out
    assert rc == 0
    result: dict[str, Any] = json.loads(out)
    return result


def test_demo_device_mints_a_bootstrap_and_prints_next_steps(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = _demo(tmp_path, "SN-0001", capsys=capsys)
    assert info["dns_name"] == "sn-0001.nodes.nodetrust.internal"
    assert info["spiffe_id"] == "spiffe://nodetrust.internal/node/sn-0001"
    assert info["manufacturer_root_created"] is True
    cert, key = Path(info["bootstrap_cert"]), Path(info["bootstrap_key"])
    assert key.stat().st_mode & 0o777 == 0o600
    assert open_bootstrap(cert, key).device_id == "SN-0001"
    assert "--authenticator nodetrust-device-attest" in info["certbot"]
    assert "-d sn-0001.nodes.nodetrust.internal" in info["certbot"]
    assert "https://127.0.0.1:14000/acme/directory" in info["enroll"]
    # The same root signs the next device.
    assert _demo(tmp_path, "SN-0002", capsys=capsys)["manufacturer_root_created"] is False

    rc = main(["demo", "device", "SN-0003", "--out", str(tmp_path / "d3"),
               "--data-dir", str(tmp_path / "data")])
    text = capsys.readouterr().out
    assert rc == 0 and "certbot certonly" in text and "nodetrust enroll" in text


def test_demo_device_in_permanent_identifier_san(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    info = _demo(tmp_path, "PID-9", "--id-in", "permanentIdentifier", capsys=capsys)
    leaf = x509.load_pem_x509_certificate(Path(info["bootstrap_cert"]).read_bytes())
    assert permanent_identifier.from_certificate(leaf) == ["PID-9"]
    assert not leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)


def test_demo_device_refuses_an_unusable_id(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["demo", "device", "!!!", "--out", str(tmp_path / "d"),
               "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "no usable characters" in err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def demo_boot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    info = _demo(tmp_path, "SN-OFFLINE", capsys=capsys)
    return info["bootstrap_cert"], info["bootstrap_key"]


def test_enroll_unreachable_server_is_one_line(tmp_path: Path, demo_boot: tuple[str, str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    url = f"https://127.0.0.1:{_closed_port()}/acme/directory"
    rc = main(["enroll", "--server", url, "--bootstrap-cert", demo_boot[0],
               "--bootstrap-key", demo_boot[1], "--out", str(tmp_path / "node")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.splitlines() == [f"nodetrust: cannot reach {url} ([Errno 111] Connection refused)"]


def test_enroll_checks_the_bootstrap_pair_first(tmp_path: Path, demo_boot: tuple[str, str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    other = _demo(tmp_path / "o", "SN-OTHER", capsys=capsys)
    rc = main(["enroll", "--bootstrap-cert", demo_boot[0], "--bootstrap-key",
               other["bootstrap_key"], "--out", str(tmp_path / "node")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("nodetrust: --bootstrap-key: ") and "is not the key of" in err
    assert not (tmp_path / "node").exists()


def test_enroll_force_needs_renew(tmp_path: Path, demo_boot: tuple[str, str],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["enroll", "--force", "--bootstrap-cert", demo_boot[0], "--bootstrap-key",
               demo_boot[1], "--out", str(tmp_path / "node")])
    assert rc == 1 and "--force only makes sense with --renew" in capsys.readouterr().err


def test_renewer_wakes_inside_the_window_but_checks_back() -> None:
    import datetime as dt
    import random
    from pathlib import Path as _P

    from nodetrust.enroll import EnrollResult
    from nodetrust.renewer import next_wake

    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    result = EnrollResult(action="enrolled", device_id="d", cert_path=_P("c"), key_path=_P("k"),
                          renew_from=now + dt.timedelta(hours=16),
                          renew_until=now + dt.timedelta(hours=20))
    rng = random.Random(7)
    waits = [next_wake(result, now, 10 * 86400, rng) for _ in range(50)]
    assert all(16 * 3600 <= w <= 20 * 3600 for w in waits) and len(set(waits)) > 1
    assert next_wake(result, now, 3600, rng) == 3600  # never longer than check_every
    past = EnrollResult(action="not-due", device_id="d", cert_path=_P("c"), key_path=_P("k"),
                        renew_from=now - dt.timedelta(hours=1), renew_until=now)
    assert next_wake(past, now, 3600, rng) == 1.0
