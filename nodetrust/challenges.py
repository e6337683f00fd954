"""device-attest-01 (draft-ietf-acme-device-attest-09) as josepy types, registered once.

Importing this module teaches `acme.challenges.Challenge.from_json` the new challenge, so
the server, the certbot plugin, the node client and the tests all parse and render it
the same way.
"""
from __future__ import annotations

from typing import Any

import josepy as jose
from acme import challenges, messages

DEVICE_ATTEST_01 = "device-attest-01"
PERMANENT_IDENTIFIER = "permanent-identifier"
HARDWARE_MODULE = "hardware-module"
# acme.messages knows only dns and ip; anything parsing a device order needs these.
IDENTIFIER_PERMANENT = messages.IdentifierType(PERMANENT_IDENTIFIER)
IDENTIFIER_HARDWARE_MODULE = messages.IdentifierType(HARDWARE_MODULE)


@challenges.Challenge.register
class DeviceAttest01(challenges.KeyAuthorizationChallenge):
    """`{"type": "device-attest-01", "url", "status", "token"}`; the node signs the key
    authorization (token "." account key thumbprint) with its bootstrap key."""

    typ = DEVICE_ATTEST_01

    def response(self, account_key: jose.JWK) -> challenges.KeyAuthorizationChallengeResponse:
        raise NotImplementedError("build DeviceAttest01Response from an attestation object")

    def validation(self, account_key: jose.JWK, **kwargs: Any) -> Any:
        raise NotImplementedError("device-attest-01 has no client-side validation resource")


@challenges.ChallengeResponse.register
class DeviceAttest01Response(challenges.ChallengeResponse):
    """`{"attObj": base64url(CBOR {"fmt", "attStmt"})}`."""

    typ = DEVICE_ATTEST_01
    att_obj: str = jose.field("attObj")
