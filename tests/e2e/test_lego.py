"""Stock lego (Debian 4.9.1, built-in http-01 and tls-alpn-01 solvers) against the selected
ACME server."""

from __future__ import annotations

import pytest

from acme_servers import AcmeServer, revoked_via_acme
from clients import Lego

pytestmark = pytest.mark.e2e

DOMAIN = "node1.test"


def test_lego_http01_run_then_renew(acme_server: AcmeServer, lego: Lego) -> None:
    first = lego.obtain(DOMAIN, "http")
    assert first.dns_names() == [DOMAIN]
    first.verify(acme_server.issuer_roots, DOMAIN)

    renewed = lego.renew(DOMAIN, "http")
    assert renewed.serial != first.serial
    assert renewed.dns_names() == [DOMAIN]
    renewed.verify(acme_server.issuer_roots, DOMAIN)


def test_lego_tlsalpn01_run(acme_server: AcmeServer, lego: Lego) -> None:
    issued = lego.obtain(DOMAIN, "tls")
    assert issued.dns_names() == [DOMAIN]
    issued.verify(acme_server.issuer_roots, DOMAIN)


def test_lego_revoke(acme_server: AcmeServer, lego: Lego) -> None:
    issued = lego.obtain(DOMAIN, "http")
    lego.revoke(DOMAIN)

    assert acme_server.is_revoked(issued.leaf, issued.key)
    # The server-independent probe (what nodetrust's is_revoked uses): a second revocation
    # signed by the certificate key must be refused with alreadyRevoked.
    assert revoked_via_acme(acme_server, issued.leaf, issued.key)


def test_lego_survives_server_restart(acme_server: AcmeServer, lego: Lego) -> None:
    """Issue, restart the server on the same data, then renew and revoke: accounts, orders and
    certificates must outlive the process."""
    if not acme_server.can_restart:
        pytest.skip(f"{acme_server.name} cannot restart with its data (in-memory store)")
    first = lego.obtain(DOMAIN, "http")

    acme_server.restart()

    renewed = lego.renew(DOMAIN, "http")
    assert renewed.serial != first.serial
    renewed.verify(acme_server.issuer_roots, DOMAIN)

    # Revoke the certificate issued before the restart, by the account that ordered it:
    # lego revokes whatever certificates/<domain>.crt holds, so put the first one back.
    lego.cert_path(DOMAIN).write_bytes(first.bundle_pem())
    lego.revoke(DOMAIN)
    assert acme_server.is_revoked(first.leaf, first.key)

