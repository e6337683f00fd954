"""The certbot plugin without a server: options, file checks, and a response the server's own
attestation verifier accepts."""
from __future__ import annotations

import argparse
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import josepy as jose
import pytest
from acme import messages
from certbot import achallenges, errors
from cryptography.hazmat.primitives.asymmetric import ec

from nodetrust.certbot_plugin import PLUGIN_NAME, Authenticator
from nodetrust.challenges import DeviceAttest01, DeviceAttest01Response
from server.demo import issue_bootstrap, make_manufacturer_root, write_bootstrap
from server.va.attest.chains import Manufacturer, ManufacturerTrust
from server.va.attest.verify import verify_attestation

REPO = Path(__file__).resolve().parents[2]
TOKEN = b"\x01" * 16


@pytest.fixture(scope="module")
def maker() -> tuple[Any, Any]:
    return make_manufacturer_root("Plugin Test Devices")


@pytest.fixture
def boot(tmp_path: Path, maker: tuple[Any, Any]) -> tuple[Path, Path]:
    cert, key = issue_bootstrap("SN-PLUGIN-1", *maker)
    return write_bootstrap(tmp_path / "boot", cert, key)


def plugin(cert: Path | None, key: Path | None) -> Authenticator:
    config = argparse.Namespace(nodetrust_device_attest_cert=cert and str(cert),
                                nodetrust_device_attest_key=key and str(key))
    return Authenticator(config, PLUGIN_NAME)  # type: ignore[arg-type]


def achall(account_key: jose.JWK, chall: Any = None) -> achallenges.AnnotatedChallenge:
    challb = messages.ChallengeBody(chall=chall or DeviceAttest01(token=TOKEN),
                                    uri="https://ca.test/chall/1", status=messages.STATUS_PENDING)
    return achallenges.KeyAuthorizationAnnotatedChallenge(
        challb=challb, account_key=account_key,
        identifier=messages.Identifier(typ=messages.IDENTIFIER_FQDN,
                                       value="sn-plugin-1.nodes.nodetrust.internal"))


def test_entry_point_declared_in_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    eps = project.get("entry-points", {}).get("certbot.plugins", {})
    assert eps.get(PLUGIN_NAME) == "nodetrust.certbot_plugin:Authenticator"


def test_options_are_namespaced_and_made_absolute(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    Authenticator.inject_parser_options(parser, PLUGIN_NAME)
    monkeypatch.chdir(tmp_path)
    ns = parser.parse_args([f"--{PLUGIN_NAME}-cert", "boot/b.pem", f"--{PLUGIN_NAME}-key", "b.key"])
    # Absolute: certbot saves these in the renewal conf, and `renew` runs from anywhere.
    assert ns.nodetrust_device_attest_cert == str(tmp_path / "boot" / "b.pem")
    assert ns.nodetrust_device_attest_key == str(tmp_path / "b.key")


def test_prefers_device_attest_only() -> None:
    assert list(plugin(None, None).get_chall_pref("x.nodes.nodetrust.internal")) == [DeviceAttest01]


def test_perform_answers_with_an_attestation_the_server_accepts(
        boot: tuple[Path, Path], maker: tuple[Any, Any]) -> None:
    auth = plugin(*boot)
    auth.prepare()
    account_key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    a = achall(account_key)
    [resp] = auth.perform([a])
    assert isinstance(resp, DeviceAttest01Response)
    assert set(resp.to_partial_json()) == {"attObj"}  # RFC 8555: no "type" in the payload
    trust = ManufacturerTrust([Manufacturer("plugin-test", (maker[0],))])
    key_authz = DeviceAttest01(token=TOKEN).key_authorization(account_key)
    evidence = verify_attestation(resp.att_obj, key_authz, trust, datetime.now(UTC))
    assert evidence.device_id == "SN-PLUGIN-1"
    auth.cleanup([a])


def test_challenge_json_parses_to_the_registered_type() -> None:
    challb = messages.ChallengeBody.from_json({
        "type": "device-attest-01", "url": "https://ca.test/c/1", "status": "pending",
        "token": jose.encode_b64jose(TOKEN)})
    assert isinstance(challb.chall, DeviceAttest01)


def test_perform_refuses_other_challenges(boot: tuple[Path, Path]) -> None:
    from acme import challenges
    auth = plugin(*boot)
    auth.prepare()
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(errors.PluginError, match="cannot answer http-01"):
        auth.perform([achall(key, challenges.HTTP01(token=TOKEN))])


def test_prepare_needs_both_options(boot: tuple[Path, Path]) -> None:
    with pytest.raises(errors.PluginError, match=f"needs --{PLUGIN_NAME}-cert"):
        plugin(boot[0], None).prepare()


def test_prepare_names_a_missing_file(tmp_path: Path, boot: tuple[Path, Path]) -> None:
    with pytest.raises(errors.PluginError, match=f"--{PLUGIN_NAME}-cert: .*missing.pem is not a file"):
        plugin(tmp_path / "missing.pem", boot[1]).prepare()


def test_prepare_refuses_a_key_of_another_certificate(tmp_path: Path, boot: tuple[Path, Path],
                                                      maker: tuple[Any, Any]) -> None:
    other_cert, other_key = issue_bootstrap("SN-OTHER", *maker)
    _, other_key_path = write_bootstrap(tmp_path / "other", other_cert, other_key)
    with pytest.raises(errors.PluginError, match=f"--{PLUGIN_NAME}-key: .* is not the key of"):
        plugin(boot[0], other_key_path).prepare()


def test_prepare_refuses_a_file_that_is_no_pem(tmp_path: Path, boot: tuple[Path, Path]) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(errors.PluginError, match=f"--{PLUGIN_NAME}-cert: .*no PEM certificate"):
        plugin(junk, boot[1]).prepare()
    with pytest.raises(errors.PluginError, match=f"--{PLUGIN_NAME}-key: .*unencrypted PEM"):
        plugin(boot[0], junk).prepare()


def test_prepare_refuses_an_expired_bootstrap(tmp_path: Path, maker: tuple[Any, Any]) -> None:
    now = datetime.now(UTC)
    cert, key = issue_bootstrap("SN-OLD", *maker, not_before=now - timedelta(days=10),
                                not_after=now - timedelta(days=1))
    paths = write_bootstrap(tmp_path / "old", cert, key)
    with pytest.raises(errors.PluginError, match="expired on"):
        plugin(*paths).prepare()

