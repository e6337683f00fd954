"""The certificate authority: the only code that holds signing keys.

It builds and signs certificates and CRLs from what the caller (the RA) decided; it does not
decide who gets what. Key files live in `ca_dir` (see `server.pki_files`). The root key is read
only to create or check the CA; leaves and CRLs are signed by the intermediate, whose key and
certificate are cached so `issue()` does no I/O.

Leaf subject: empty, with a critical SAN (RFC 5280 §4.2.1.6, SPIFFE X.509-SVID). Names live in
the SAN, which is what current verifiers read; a CN would only repeat one of them.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID

from server import permanent_identifier, pki_files
from server.pki_files import KEY_TYPES, CAError, generate_key, new_serial

__all__ = [
    "KEY_TYPES",
    "PERMANENT_IDENTIFIER_OID",
    "CAError",
    "CertificateAuthority",
    "IssuedCertificate",
    "encode_permanent_identifier",
    "generate_key",
    "key_description",
]

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PERMANENT_IDENTIFIER_OID = permanent_identifier.OID  # RFC 4043
SERVER_BACKDATE = timedelta(minutes=5)

# RFC 5280 §5.3.1 reason codes (7 is unused). 0 = unspecified is written as "no reason extension".
_REASONS: dict[int, x509.ReasonFlags] = {
    1: x509.ReasonFlags.key_compromise,
    2: x509.ReasonFlags.ca_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    6: x509.ReasonFlags.certificate_hold,
    8: x509.ReasonFlags.remove_from_crl,
    9: x509.ReasonFlags.privilege_withdrawn,
    10: x509.ReasonFlags.aa_compromise,
}


def _leaf_key_usage(key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


_KU_LEAF = _leaf_key_usage(key_encipherment=False)
_KU_LEAF_RSA = _leaf_key_usage(key_encipherment=True)  # RSA key transport (TLS 1.2 RSA kx)
_LEAF_BC = x509.BasicConstraints(ca=False, path_length=None)


@dataclass(frozen=True)
class IssuedCertificate:
    serial: int
    der: bytes
    chain_pem: bytes  # leaf PEM + intermediate PEM: what the ACME certificate URL returns
    not_before: datetime
    not_after: datetime


def key_description(public_key: PublicKeyTypes) -> str:
    """Human-readable key type, e.g. "ECDSA P-256", "RSA 2048", "Ed25519" (for policy messages)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"ECDSA {names.get(public_key.curve.name, public_key.curve.name)}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(public_key).__name__


# key_description() -> the KEY_TYPES spelling, to report what a loaded CA is made of.
_KEY_TYPE_BY_DESCRIPTION = {
    "ECDSA P-256": "ec-p256",
    "ECDSA P-384": "ec-p384",
    "RSA 2048": "rsa-2048",
    "RSA 3072": "rsa-3072",
    "Ed25519": "ed25519",
}


def _key_type_name(public_key: PublicKeyTypes) -> str:
    desc = key_description(public_key)
    return _KEY_TYPE_BY_DESCRIPTION.get(desc, desc)


# --- PermanentIdentifier (RFC 4043) as an otherName value: cryptography takes ready-made DER.
def encode_permanent_identifier(identifier_value: str) -> bytes:
    """DER of PermanentIdentifier { identifierValue } (server.permanent_identifier)."""
    return permanent_identifier.encode(identifier_value)


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None:
        raise CAError(f"{what} must be timezone-aware")
    return value.astimezone(UTC)


class CertificateAuthority:
    """A root + issuing intermediate. Build with `load_or_create`."""

    def __init__(
        self,
        *,
        root_cert: x509.Certificate,
        root_path: Path,
        intermediate_cert: x509.Certificate,
        intermediate_key: CertificateIssuerPrivateKeyTypes,
    ) -> None:
        self.root_cert = root_cert
        self.root_path = root_path
        self.root_pem = pki_files.certificate_pem(root_cert)
        self.intermediate_cert = intermediate_cert
        self.intermediate_pem = pki_files.certificate_pem(intermediate_cert)
        self.key_type = _key_type_name(intermediate_key.public_key())
        # Everything issue()/crl() need, computed once: no file reads or re-parsing per call.
        self._key = intermediate_key
        self._hash = pki_files.signature_hash(intermediate_key)
        self._issuer = intermediate_cert.subject
        try:  # the intermediate's own SKI, in case its issuer computed it another way
            ski = intermediate_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)
        except x509.ExtensionNotFound:
            pub = intermediate_key.public_key()
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(pub)
        # The AKI keyIdentifier every leaf carries (ARI ids: base64url(AKI keyid).serial).
        self.intermediate_ski: bytes = self._aki.key_identifier or b""

    @classmethod
    def load_or_create(
        cls,
        ca_dir: Path,
        *,
        key_type: str = "ec-p256",
        common_name: str = "nodetrust",
        now: datetime | None = None,
    ) -> CertificateAuthority:
        """Load the CA from `ca_dir`, or create root + intermediate there if it holds none.

        Refuses (CAError naming the file) a half-made, mismatched, broken or expired CA rather
        than overwriting keys. `key_type` and `common_name` only matter at creation.
        """
        now = _utc(now or datetime.now(UTC), "now")
        ca_dir = Path(ca_dir)
        material = pki_files.load_ca(ca_dir, now)
        if material is None:
            material = pki_files.create_ca(ca_dir, key_type, common_name, now)
        ca = cls(
            root_cert=material.root_cert,
            root_path=material.root_path,
            intermediate_cert=material.intermediate_cert,
            intermediate_key=material.intermediate_key,
        )
        if ca.key_type != key_type:  # the files win; say so rather than silently ignore config
            log.warning(
                "%s holds a %s CA; key_type %s applies only to a new CA",
                ca_dir,
                ca.key_type,
                key_type,
            )
        return ca

    # --- issuance --------------------------------------------------------------------------------

    def issue(
        self,
        public_key: CertificatePublicKeyTypes,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[IPAddress] = (),
        uris: Sequence[str] = (),
        permanent_identifiers: Sequence[str] = (),
        not_before: datetime,
        not_after: datetime,
        crl_url: str | None = None,
        client_auth: bool = True,
        server_auth: bool = True,
    ) -> IssuedCertificate:
        """Sign a leaf for `public_key` with exactly these names and validity (no backdating)."""
        not_before, not_after = _utc(not_before, "not_before"), _utc(not_after, "not_after")
        if not_before >= not_after:
            raise CAError(f"not_before {not_before} is not before not_after {not_after}")
        if not_after > self.intermediate_cert.not_valid_after_utc:
            raise CAError(
                f"not_after {not_after} is past the intermediate's expiry "
                f"{self.intermediate_cert.not_valid_after_utc}"
            )
        # dict.fromkeys: drop duplicates, keep the caller's order.
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns_names)]
        sans += [x509.IPAddress(ip) for ip in dict.fromkeys(ip_addresses)]
        sans += [x509.UniformResourceIdentifier(u) for u in dict.fromkeys(uris)]
        sans += [
            x509.OtherName(PERMANENT_IDENTIFIER_OID, encode_permanent_identifier(p))
            for p in dict.fromkeys(permanent_identifiers)
        ]
        if not sans:
            raise CAError(
                "a certificate needs at least one name (DNS, IP, URI or permanent identifier)"
            )
        ekus = [
            oid
            for oid, on in (
                (ExtendedKeyUsageOID.SERVER_AUTH, server_auth),
                (ExtendedKeyUsageOID.CLIENT_AUTH, client_auth),
            )
            if on
        ]
        if not ekus:  # a leaf without EKU is valid for *any* purpose: never the intent
            raise CAError("at least one of server_auth or client_auth must be set")

        serial = new_serial()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._issuer)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(_LEAF_BC, critical=True)
            .add_extension(
                _KU_LEAF_RSA if isinstance(public_key, rsa.RSAPublicKey) else _KU_LEAF,
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)  # subject is empty
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._aki, critical=False)
        )
        if crl_url:
            dp = x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(crl_url)],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
            builder = builder.add_extension(x509.CRLDistributionPoints([dp]), critical=False)
        cert = builder.sign(self._key, self._hash)
        return IssuedCertificate(
            serial=serial,
            der=cert.public_bytes(serialization.Encoding.DER),
            chain_pem=pki_files.certificate_pem(cert) + self.intermediate_pem,
            not_before=not_before,
            not_after=not_after,
        )

    def server_certificate(
        self,
        hostnames: Sequence[str],
        out_dir: Path,
        *,
        lifetime: timedelta = timedelta(days=30),
        now: datetime | None = None,
    ) -> tuple[Path, Path]:
        """TLS cert for our own HTTPS listener (DNS names or IP literals).

        Reuses out_dir/server.pem + server.key while they match the names, chain to this CA and
        have more than a third of their lifetime left; otherwise issues anew (key 0600).
        """
        now = _utc(now or datetime.now(UTC), "now")
        dns, ips = _split_hostnames(hostnames)
        out_dir = Path(out_dir)
        chain_path, key_path = out_dir / "server.pem", out_dir / "server.key"
        reason = self._reuse_problem(chain_path, key_path, dns, ips, now)
        if reason is None:
            return chain_path, key_path
        log.info("issuing server certificate for %s: %s", ", ".join(hostnames), reason)
        pki_files.ensure_private_dir(out_dir)
        # P-256: cheapest handshake, accepted by every client.
        key = ec.generate_private_key(ec.SECP256R1())
        issued = self.issue(
            key.public_key(),
            dns_names=dns,
            ip_addresses=ips,
            not_before=now - SERVER_BACKDATE,
            not_after=min(now + lifetime, self.intermediate_cert.not_valid_after_utc),
            server_auth=True,
            client_auth=False,
        )
        # Key first: a crash in between leaves a key/cert mismatch, which the next start reissues.
        pki_files.write_atomic(key_path, pki_files.private_key_pem(key), pki_files.KEY_MODE)
        pki_files.write_atomic(chain_path, issued.chain_pem, pki_files.CERT_MODE)
        return chain_path, key_path

    def _reuse_problem(
        self, chain_path: Path, key_path: Path, dns: list[str], ips: list[IPAddress], now: datetime
    ) -> str | None:
        """Why the existing server cert can't be reused, or None if it can."""
        if not (chain_path.exists() and key_path.exists()):
            return "no existing certificate"
        try:
            leaf, _ = pki_files.load_pair(chain_path, key_path)  # also checks the key matches
            leaf.verify_directly_issued_by(self.intermediate_cert)
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (CAError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound) as e:
            return f"existing certificate unusable ({e or type(e).__name__})"
        have_dns = set(san.get_values_for_type(x509.DNSName))
        if have_dns != set(dns) or set(san.get_values_for_type(x509.IPAddress)) != set(ips):
            return "names changed"
        start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
        if now < start or end - now <= (end - start) / 3:
            return "less than a third of its lifetime left"
        return None

    # --- revocation ------------------------------------------------------------------------------

    def crl(
        self,
        revoked: Iterable[tuple[int, datetime, int | None]],
        *,
        crl_number: int,
        this_update: datetime,
        next_update: datetime,
    ) -> bytes:
        """DER CRL signed by the intermediate; entries: (serial, revoked_at, RFC 5280 reason)."""
        this_update = _utc(this_update, "this_update")
        next_update = _utc(next_update, "next_update")
        if next_update <= this_update:
            raise CAError("next_update must be after this_update")
        if not 0 <= crl_number < 2**159:  # RFC 5280 §5.2.3: at most 20 octets
            raise CAError(f"CRL number {crl_number} out of range")
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._issuer)
            .last_update(this_update)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(crl_number), critical=False)
            .add_extension(self._aki, critical=False)
        )
        for serial, revoked_at, reason in revoked:
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(_utc(revoked_at, "revocation time"))
            )
            if reason not in (None, 0):  # RFC 5280: omit reasonCode rather than write unspecified
                if reason not in _REASONS:
                    raise CAError(f"serial {serial:x}: invalid revocation reason code {reason}")
                entry = entry.add_extension(x509.CRLReason(_REASONS[reason]), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        return builder.sign(self._key, self._hash).public_bytes(serialization.Encoding.DER)


def _split_hostnames(hostnames: Sequence[str]) -> tuple[list[str], list[IPAddress]]:
    """IP literals become IP SANs (clients match IPs only against those), the rest DNS names."""
    dns: list[str] = []
    ips: list[IPAddress] = []
    for name in hostnames:
        try:
            ips.append(ipaddress.ip_address(name.strip("[]")))
        except ValueError:
            dns.append(name.rstrip(".").lower())
    if not dns and not ips:
        raise CAError("server certificate needs at least one hostname")
    return list(dict.fromkeys(dns)), list(dict.fromkeys(ips))
