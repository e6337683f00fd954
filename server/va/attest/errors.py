"""The one failure type of attestation checks; `check` names what failed."""
from __future__ import annotations

from server.errors import ValidationFailure

BAD_ATTESTATION = "badAttestationStatement"


def attestation_failure(check: str, detail: str) -> ValidationFailure:
    return ValidationFailure(BAD_ATTESTATION, f"{check}: {detail}")
