"""Stock certbot (standalone http-01) against the selected ACME server."""

from __future__ import annotations

import pytest

from acme_servers import AcmeServer, PebbleServer
from clients import Certbot

pytestmark = pytest.mark.e2e

DOMAIN = "node1.test"


def test_certbot_certonly_then_renew(acme_server: AcmeServer, certbot: Certbot) -> None:
    first = certbot.certonly(DOMAIN)
    assert first.dns_names() == [DOMAIN]
    first.verify(acme_server.issuer_roots, DOMAIN)

    renewed = certbot.renew(DOMAIN)
    assert renewed.serial != first.serial
    assert renewed.dns_names() == [DOMAIN]
    renewed.verify(acme_server.issuer_roots, DOMAIN)


@pytest.mark.parametrize(
    ("reason", "by_cert_key", "rfc5280_code"),
    [
        pytest.param(None, False, 0, id="unspecified-account-key"),
        pytest.param("keycompromise", False, 1, id="keycompromise-account-key"),
        pytest.param("keycompromise", True, 1, id="keycompromise-cert-key"),
    ],
)
def test_certbot_revoke(
    acme_server: AcmeServer,
    certbot: Certbot,
    reason: str | None,
    by_cert_key: bool,
    rfc5280_code: int,
) -> None:
    issued = certbot.certonly(DOMAIN)
    issued.verify(acme_server.issuer_roots, DOMAIN)

    certbot.revoke(issued, reason=reason, by_cert_key=by_cert_key)

    assert acme_server.is_revoked(issued.leaf, issued.key)
    if isinstance(acme_server, PebbleServer):
        assert acme_server.cert_status(issued.leaf).get("Reason") == rfc5280_code
