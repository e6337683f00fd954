"""Manufacturer trust: the only module that builds x509 verifiers for bootstrap chains.

Chains are verified with `cryptography.x509.verification` at the current time. Bootstrap
(IDevID-style) leaves often have no SAN and no EKU, so only the end-entity extension
policy is relaxed; CA certificates keep the Web PKI defaults (basic constraints, key
usage keyCertSign). The leaf must allow digitalSignature when it has a key usage at all.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.verification import (ExtensionPolicy, PolicyBuilder, Store,
                                            VerificationError)

from server.va.attest.errors import attestation_failure

log = logging.getLogger("nodetrust.attest")


@dataclass(frozen=True)
class Manufacturer:
    name: str
    roots: tuple[x509.Certificate, ...]
    device_id_source: str = "auto"  # serialNumber | permanentIdentifier | auto
    crls: tuple[x509.CertificateRevocationList, ...] = ()


@dataclass(frozen=True)
class VerifiedBootstrap:
    manufacturer: Manufacturer
    chain: list[x509.Certificate]  # leaf first, root last

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


class TrustLoadError(Exception):
    """A manufacturer root or CRL file cannot be used; names the file."""


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate of a PEM file, or of every *.pem/*.crt file in a folder."""
    files = sorted(p for p in path.iterdir() if p.suffix in (".pem", ".crt")) if path.is_dir() else [path]
    out: list[x509.Certificate] = []
    for f in files:
        try:
            certs = x509.load_pem_x509_certificates(f.read_bytes())
        except (OSError, ValueError) as exc:
            raise TrustLoadError(f"{f}: not a PEM certificate file ({exc})") from None
        for cert in certs:
            try:
                bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            except x509.ExtensionNotFound:
                bc = None
            if bc is None or not bc.ca:
                raise TrustLoadError(f"{f}: {cert.subject.rfc4514_string()} is not a CA certificate")
        out.extend(certs)
    return out


def load_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        data = path.read_bytes()
        return (x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----")
                else x509.load_der_x509_crl(data))
    except (OSError, ValueError) as exc:
        raise TrustLoadError(f"{path}: not a CRL ({exc})") from None


@dataclass
class ManufacturerTrust:
    manufacturers: list[Manufacturer] = field(default_factory=list)

    def verify(self, chain: list[x509.Certificate], now: datetime) -> VerifiedBootstrap:
        """The manufacturer whose roots anchor `chain` (leaf first), or a failure that says
        why: expired / not yet valid / untrusted chain / key usage / revoked."""
        leaf, intermediates = chain[0], chain[1:]
        if now < leaf.not_valid_before_utc:
            raise attestation_failure("bootstrap certificate not yet valid",
                                      f"valid from {leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}")
        if now > leaf.not_valid_after_utc:
            raise attestation_failure("bootstrap certificate expired",
                                      f"expired {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
        _check_leaf_key_usage(leaf)
        reasons = []
        for maker in self.manufacturers:
            verifier = (PolicyBuilder().store(Store(list(maker.roots))).time(now)
                        .extension_policies(ee_policy=ExtensionPolicy.permit_all(),
                                            ca_policy=ExtensionPolicy.webpki_defaults_ca())
                        .build_client_verifier())
            try:
                verified = verifier.verify(leaf, intermediates)
            except VerificationError as exc:
                reasons.append(f"{maker.name}: {exc}")
                continue
            result = VerifiedBootstrap(maker, list(verified.chain))
            self._check_revocation(result, now)
            return result
        detail = "; ".join(reasons) if reasons else "no manufacturer roots are configured"
        raise attestation_failure("untrusted chain", f"the bootstrap chain does not lead to a "
                                  f"configured manufacturer root ({detail})")

    @staticmethod
    def _check_revocation(result: VerifiedBootstrap, now: datetime) -> None:
        leaf = result.leaf
        issuer = result.chain[1] if len(result.chain) > 1 else None
        for crl in result.manufacturer.crls:
            if issuer is None or crl.issuer != leaf.issuer:
                continue
            if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                log.warning("manufacturer %s: CRL of %s has a bad signature; ignored",
                            result.manufacturer.name, crl.issuer.rfc4514_string())
                continue
            if crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
                raise attestation_failure("bootstrap certificate revoked",
                                          f"serial {leaf.serial_number:x} is on the CRL of "
                                          f"manufacturer {result.manufacturer.name}")


def _check_leaf_key_usage(leaf: x509.Certificate) -> None:
    try:
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.digital_signature:
        raise attestation_failure("key usage", "the bootstrap certificate's key usage does not "
                                  "allow digitalSignature")




DEMO_MANUFACTURER = "demo"


def load_trust(roots_dir: Path | None, *, demo_dir: Path | None = None,
               crl_paths: tuple[Path, ...] = (), default_source: str = "auto",
               sources: dict[str, str] | None = None) -> ManufacturerTrust:
    """One manufacturer per PEM file in `roots_dir` (name = file stem), plus the demo
    manufacturer when `demo_dir` holds a root. CRLs attach to the manufacturer whose root
    issued them or whose chain they match at verification time (by issuer name)."""
    sources = sources or {}
    makers: list[Manufacturer] = []
    crls = tuple(load_crl(p) for p in crl_paths)
    found: list[tuple[str, Path]] = []
    if roots_dir is not None:
        if not roots_dir.is_dir():
            raise TrustLoadError(f"{roots_dir}: manufacturer roots folder does not exist")
        found += [(p.stem, p) for p in sorted(roots_dir.iterdir()) if p.suffix in (".pem", ".crt")]
    if demo_dir is not None and (demo_dir / "root.pem").exists():
        found.append((DEMO_MANUFACTURER, demo_dir / "root.pem"))
    for name, path in found:
        makers.append(Manufacturer(name=name, roots=tuple(load_certificates(path)),
                                   device_id_source=sources.get(name, default_source), crls=crls))
    log.info("manufacturer roots: %s", ", ".join(m.name for m in makers) or "(none)")
    return ManufacturerTrust(makers)
