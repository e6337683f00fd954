"""Attestation statement formats, one module each, registered in one table.

A format turns `attStmt` plus the signed data (the key authorization) into the evidence
chain, after checking the signature. `tpm` and others plug in here."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from cryptography import x509

from server.va.attest.formats import packed

# (attStmt, signed data) -> [leaf, intermediates...]; raises attestation_failure.
FormatVerifier = Callable[[Mapping[str, Any], bytes], list[x509.Certificate]]

FORMATS: dict[str, FormatVerifier] = {
    "packed": packed.verify,
    # step CLI (YubiKey PIV) sends the packed shape: {alg, sig, x5c}.
    "step": packed.verify,
}
