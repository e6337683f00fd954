"""Challenge type -> validator, and which challenge types each identifier type offers.

The RA asks `types_for()` when it creates an authorization and `validate()` when the client
answers a challenge; adding a challenge type is one `register()` call (or one entry below).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from server.errors import ValidationFailure
from server.va.http01 import Http01Validator
from server.va.resolve import ValidationSettings
from server.va.tlsalpn01 import TlsAlpn01Validator

# (identifier_type, identifier_value, token, key_authorization, settings)
Validator = Callable[[str, str, str, str, ValidationSettings], Awaitable[None]]


@dataclass(frozen=True)
class ChallengeSpec:
    validate: Validator
    identifier_types: frozenset[str]


class ChallengeValidators:
    """Owns the long-lived validator state (HTTP session, SSL context); close() on shutdown."""

    def __init__(self, settings: ValidationSettings) -> None:
        self.settings = settings
        self._http01 = Http01Validator(settings)
        self._tls_alpn01 = TlsAlpn01Validator(settings)
        # Insertion order is the order challenges are offered in an authorization.
        self._specs: dict[str, ChallengeSpec] = {}
        self.register("http-01", self._validate_http01, ("dns", "ip"))
        self.register("tls-alpn-01", self._validate_tls_alpn01, ("dns", "ip"))

    def register(self, challenge_type: str, validator: Validator,
                 identifier_types: Iterable[str]) -> None:
        """Add (or replace) a challenge type, e.g. device-attest-01 for permanent-identifier."""
        self._specs[challenge_type] = ChallengeSpec(validator, frozenset(identifier_types))

    def types_for(self, identifier_type: str) -> list[str]:
        return [t for t, spec in self._specs.items() if identifier_type in spec.identifier_types]

    async def validate(self, challenge_type: str, identifier_type: str, identifier_value: str,
                       token: str, key_authorization: str) -> None:
        """Return if the challenge passed; raise ValidationFailure otherwise."""
        spec = self._specs.get(challenge_type)
        if spec is None:
            raise ValidationFailure("malformed", f"unsupported challenge type {challenge_type!r}")
        if identifier_type not in spec.identifier_types:
            raise ValidationFailure("malformed", f"challenge type {challenge_type} cannot "
                                                 f"validate {identifier_type} identifiers")
        await spec.validate(identifier_type, identifier_value, token, key_authorization,
                            self.settings)

    async def close(self) -> None:
        await self._http01.close()

    # Adapters to the Validator shape; the validators already hold `settings`.
    async def _validate_http01(self, identifier_type: str, value: str, token: str,
                               key_authorization: str, settings: ValidationSettings) -> None:
        await self._http01.validate(value, token, key_authorization)

    async def _validate_tls_alpn01(self, identifier_type: str, value: str, token: str,
                                   key_authorization: str, settings: ValidationSettings) -> None:
        await self._tls_alpn01.validate(value, key_authorization)
