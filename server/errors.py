"""ACME problems (RFC 8555 §6.7, RFC 7807): the one error type every layer raises.

Handlers, the RA and the VA raise `AcmeProblem`; only the web front end turns it into a
problem document (see `server.api.middleware`). Internal errors never reach a client.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"

# problem code -> default HTTP status
_STATUS: dict[str, int] = {
    "accountDoesNotExist": 400,
    "alreadyRevoked": 400,
    "badAttestationStatement": 400,
    "badCSR": 400,
    "badNonce": 400,
    "badPublicKey": 400,
    "badRevocationReason": 400,
    "badSignatureAlgorithm": 400,
    "caa": 403,
    "compound": 403,
    "connection": 400,
    "dns": 400,
    "externalAccountRequired": 403,
    "incorrectResponse": 403,
    "invalidContact": 400,
    "invalidProfile": 400,
    "malformed": 400,
    "orderNotReady": 403,
    "rateLimited": 429,
    "rejectedIdentifier": 400,
    "serverInternal": 500,
    "tls": 400,
    "unauthorized": 403,
    "unsupportedContact": 400,
    "unsupportedIdentifier": 400,
    "userActionRequired": 403,
    "conflict": 409,
    "alreadyReplaced": 409,
}


@dataclass
class AcmeProblem(Exception):
    """A refusal the client should see. `code` is the ACME error name without prefix."""

    code: str
    detail: str
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    subproblems: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.status:
            self.status = _STATUS.get(self.code, 400)
        super().__init__(f"{self.code}: {self.detail}")

    @property
    def type(self) -> str:
        return ACME_ERROR_PREFIX + self.code

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.type, "detail": self.detail, "status": self.status}
        if self.subproblems:
            doc["subproblems"] = self.subproblems
        doc.update(self.extra)
        return doc


def malformed(detail: str) -> AcmeProblem:
    return AcmeProblem("malformed", detail)


def unauthorized(detail: str) -> AcmeProblem:
    return AcmeProblem("unauthorized", detail)


def not_found(detail: str = "no such resource") -> AcmeProblem:
    return AcmeProblem("malformed", detail, status=404)


class ValidationFailure(Exception):
    """A challenge did not validate. `code` is the ACME error name (connection, dns, tls,
    incorrectResponse, unauthorized, badAttestationStatement, ...); the RA stores it on the
    challenge as its `error`."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    def to_json(self) -> dict[str, Any]:
        return {"type": ACME_ERROR_PREFIX + self.code, "detail": self.detail,
                "status": _STATUS.get(self.code, 400)}
