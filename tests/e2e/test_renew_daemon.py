"""`nodetrust enroll --daemon`: enrolls, then renews when the server's ARI window opens; a
revoked certificate gets a window in the past, so the renewer replaces it at its next check."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from acme_servers import NodetrustServer, start_nodetrust
from nodetrust.acme_errors import ENROLL_ERRORS, one_line
from nodetrust.bootstrap import open_bootstrap
from nodetrust.enroll import EnrollRequest
from nodetrust.renewer import run_daemon
from server.store.repo import Store
from test_device_enroll import demo_device

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodetrustServer]:
    workdir = tmp_path_factory.mktemp("nodetrust-daemon")
    demo_device(workdir / "data", "SN-SEED", workdir / "seed")
    with start_nodetrust(workdir) as srv:
        yield srv


def test_daemon_enrolls_then_replaces_a_revoked_certificate(server: NodetrustServer,
                                                            tmp_path: Path) -> None:
    cert, key = demo_device(server.data_dir, "DAEMON-1", tmp_path / "dev")
    req = EnrollRequest(server=server.directory_url, bootstrap=open_bootstrap(cert, key),
                        out=tmp_path / "node", verify=str(server.ca_bundle))
    lines: list[str] = []
    seen = threading.Condition()
    stop = threading.Event()

    def report(line: str) -> None:
        with seen:
            lines.append(line)
            seen.notify_all()

    def wait_for(prefix: str, count: int = 1) -> None:
        with seen:
            assert seen.wait_for(lambda: sum(x.startswith(prefix) for x in lines) >= count,
                                 timeout=60), lines

    # check_every 0.5 s: how often the renewer asks the server again (product setting).
    worker = threading.Thread(target=run_daemon, kwargs=dict(
        req=req, check_every=0.5, report=report, errors=ENROLL_ERRORS,
        describe=lambda e: one_line(e, server.directory_url), stop=stop))
    worker.start()
    try:
        wait_for("enrolled")
        first = x509.load_pem_x509_certificate((tmp_path / "node" / "node.pem").read_bytes())
        wait_for("next check")
        store = Store(server.data_dir / "nodetrust.db")  # an operator's `nodetrust revoke`
        try:
            assert store.revoke_certificate(format(first.serial_number, "x"), reason=1,
                                            when=first.not_valid_before_utc)
        finally:
            store.close()
        wait_for("renewed")
        second = x509.load_pem_x509_certificate((tmp_path / "node" / "node.pem").read_bytes())
        assert second.serial_number != first.serial_number
    finally:
        stop.set()
        worker.join(timeout=30)
    assert lines[-1] == "stopped"
