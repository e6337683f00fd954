"""device-attest-01 verification: attestation object -> verified bootstrap identity.

Pure apart from the trust store it is given: no database, no HTTP. Every failure is a
`ValidationFailure("badAttestationStatement", "<check>: <detail>")` naming the check.
"""
