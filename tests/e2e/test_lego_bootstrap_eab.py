"""Stock lego enrolls a device through the bootstrap mTLS listener: the bootstrap
certificate buys EAB credentials whose account is pre-authorized for that device only."""
from __future__ import annotations

import json
import signal
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_servers import NodetrustServer, selected_target, start_nodetrust
from clients import ClientFailed, Lego
from server.demo import (ensure_demo_manufacturer, issue_bootstrap, make_manufacturer_intermediate,
                         make_manufacturer_root, write_bootstrap)

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(selected_target() != "nodetrust", reason="nodetrust only")]
DEVICE = "LEGO-0001"
NODE_DNS = "lego-0001.nodes.nodetrust.internal"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodetrustServer]:
    workdir = tmp_path_factory.mktemp("lego-eab")
    ensure_demo_manufacturer(workdir / "data")  # the demo manufacturer exists before start
    with start_nodetrust(workdir) as srv:
        assert isinstance(srv, NodetrustServer)
        yield srv


def bootstrap_eab(server: NodetrustServer, cert: Path, key: Path) -> tuple[int, dict[str, Any]]:
    ctx = ssl.create_default_context(cafile=str(server.ca_bundle))
    ctx.load_cert_chain(cert, key)
    req = urllib.request.Request(server.bootstrap_url, method="POST", data=b"")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def demo_device(server: NodetrustServer, out: Path, device_id: str) -> tuple[Path, Path]:
    root, root_key, _ = ensure_demo_manufacturer(server.data_dir)
    cert, key = issue_bootstrap(device_id, root, root_key)
    return write_bootstrap(out, cert, key)


def test_lego_with_bootstrap_eab_gets_the_node_identity(server: NodetrustServer,
                                                        tmp_path: Path) -> None:
    cert, key = demo_device(server, tmp_path / "device", DEVICE)
    status, creds = bootstrap_eab(server, cert, key)
    assert status == 201, creds
    assert creds["dns_name"] == NODE_DNS and creds["directory"] == server.directory_url

    lego = Lego(server, tmp_path / "lego")
    lego.eab = (creds["kid"], creds["hmac_key"])
    issued = lego.obtain(NODE_DNS)  # no challenge is served: the authorization is already valid
    issued.verify(server.issuer_roots, NODE_DNS)
    san = issued.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://nodetrust.internal/node/lego-0001"]
    boot_key = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert issued.leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
        boot_key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)


def test_the_eab_account_cannot_get_another_devices_name(server: NodetrustServer,
                                                         tmp_path: Path) -> None:
    cert, key = demo_device(server, tmp_path / "device", "LEGO-0002")
    status, creds = bootstrap_eab(server, cert, key)
    assert status == 201, creds
    lego = Lego(server, tmp_path / "lego")
    lego.eab = (creds["kid"], creds["hmac_key"])
    with pytest.raises(ClientFailed) as failed:
        # Another device's name: its authorization needs device-attest-01, which lego lacks.
        lego.run_lego("lego-0003.nodes.nodetrust.internal", "http", "run")
    assert "device-attest-01" in str(failed.value) or "solver" in str(failed.value).lower(), \
        str(failed.value)[-2000:]


def test_a_device_issued_by_a_factory_intermediate_gets_credentials(
        server: NodetrustServer, tmp_path: Path) -> None:
    # The manufacturer's PEM file holds only its root; the device sends leaf + intermediate,
    # as devices from a factory line's issuing CA do.
    root, root_key, _ = ensure_demo_manufacturer(server.data_dir)
    line_ca, line_key = make_manufacturer_intermediate("nodetrust Demo Devices", root, root_key)
    cert, key = issue_bootstrap("LINE3-0001", line_ca, line_key)
    with_chain = write_bootstrap(tmp_path / "chain", cert, key, [line_ca])
    status, creds = bootstrap_eab(server, *with_chain)
    assert status == 201, creds
    assert creds["device_id"] == "LINE3-0001"
    # Without the intermediate the device cannot be chained to the root: refused in TLS.
    leaf_only = write_bootstrap(tmp_path / "leaf", cert, key)
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        bootstrap_eab(server, *leaf_only)


def test_unknown_manufacturer_cannot_get_credentials(server: NodetrustServer, tmp_path: Path) -> None:
    stranger = make_manufacturer_root("Unknown Vendor")
    cert, key = issue_bootstrap("X-1", *stranger)
    cert_path, key_path = write_bootstrap(tmp_path, cert, key)
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        bootstrap_eab(server, cert_path, key_path)


def test_a_new_manufacturer_root_is_trusted_after_sighup(server: NodetrustServer,
                                                         tmp_path: Path) -> None:
    factory = make_manufacturer_root("Second Factory")
    cert, key = write_bootstrap(tmp_path, *issue_bootstrap("SF-0001", *factory))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        bootstrap_eab(server, cert, key)  # not trusted yet: the TLS handshake fails
    roots = server.data_dir.parent / "manufacturer-roots"
    (roots / "second-factory.pem").write_bytes(factory[0].public_bytes(serialization.Encoding.PEM))
    assert server._proc is not None
    pid = server._proc.pid
    server._proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while True:  # the reload is asynchronous: wait until the server answers with it
        try:
            status, creds = bootstrap_eab(server, cert, key)
            break
        except (ssl.SSLError, urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline, "the new root was not picked up after SIGHUP"
            time.sleep(0.05)  # wait-ok: polling another process
    assert status == 201 and creds["device_id"] == "SF-0001"
    assert server._proc.pid == pid and server._proc.poll() is None  # no restart
