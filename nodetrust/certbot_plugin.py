"""certbot authenticator for device-attest-01: the node proves which device it is with its
factory bootstrap certificate + key; certbot's own new key gets the operational certificate.

    certbot certonly --authenticator nodetrust-device-attest \
        --nodetrust-device-attest-cert BOOT.pem --nodetrust-device-attest-key BOOT.key \
        -d <node-id>.nodes.nodetrust.internal

Paths are stored absolute (certbot saves plugin-namespaced options in the renewal conf), so
`certbot renew` runs unattended from any working directory.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from acme import challenges
from certbot import achallenges, errors, interfaces
from certbot.plugins import common

from nodetrust.attestation import build_att_obj
from nodetrust.bootstrap import Bootstrap, BootstrapError, open_bootstrap
from nodetrust.challenges import DeviceAttest01, DeviceAttest01Response

logger = logging.getLogger(__name__)

PLUGIN_NAME = "nodetrust-device-attest"


def check_bootstrap(cert_path: str | None, key_path: str | None) -> Bootstrap:
    """The bootstrap files, or a PluginError naming the option and the file at fault."""
    if not cert_path or not key_path:
        raise errors.PluginError(
            f"{PLUGIN_NAME} needs --{PLUGIN_NAME}-cert BOOTSTRAP.pem and "
            f"--{PLUGIN_NAME}-key BOOTSTRAP.key")
    try:
        return open_bootstrap(Path(cert_path), Path(key_path))
    except BootstrapError as exc:
        raise errors.PluginError(f"--{PLUGIN_NAME}-{exc.which}: {exc}") from None


class Authenticator(common.Plugin, interfaces.Authenticator):
    """Answers device-attest-01 with a `step`-format attestation by the bootstrap key."""

    description = ("Prove the device with its bootstrap (IDevID) certificate "
                   "(nodetrust device-attest-01)")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bootstrap: Bootstrap | None = None

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        # abspath: the value is saved in the renewal conf and used from another cwd later.
        add("cert", type=os.path.abspath, default=None,
            help="the device's bootstrap certificate (PEM: leaf, then any intermediates)")
        add("key", type=os.path.abspath, default=None,
            help="the bootstrap certificate's private key (unencrypted PEM)")

    def prepare(self) -> None:
        self._bootstrap = check_bootstrap(self.conf("cert"), self.conf("key"))
        logger.info("bootstrap certificate for device %s", self._bootstrap.device_id)

    def more_info(self) -> str:
        return ("Answers the device-attest-01 challenge (draft-ietf-acme-device-attest) by "
                "signing the key authorization with the device's factory bootstrap key and "
                "sending its certificate chain. The issued certificate is for certbot's own "
                "new key; the bootstrap key never leaves this machine.")

    def get_chall_pref(self, identifier: str) -> Iterable[type[challenges.Challenge]]:
        return [DeviceAttest01]

    def perform(self, achalls: list[achallenges.AnnotatedChallenge]
                ) -> list[challenges.ChallengeResponse]:
        boot = self._bootstrap or check_bootstrap(self.conf("cert"), self.conf("key"))
        responses: list[challenges.ChallengeResponse] = []
        for achall in achalls:
            if not isinstance(achall.chall, DeviceAttest01):
                raise errors.PluginError(f"{PLUGIN_NAME} cannot answer {achall.chall.typ}")
            key_authz = achall.chall.key_authorization(achall.account_key)
            logger.debug("device-attest-01 for %s", achall.identifier.value)
            responses.append(DeviceAttest01Response(
                att_obj=build_att_obj(key_authz, boot.key, boot.chain_der)))
        return responses

    def cleanup(self, achalls: list[achallenges.AnnotatedChallenge]) -> None:
        """Nothing was published anywhere: the attestation travels in the response."""
