"""tls-alpn-01 (RFC 8737; IP identifiers per RFC 8738 §6): check the self-signed certificate a
node presents when asked for ALPN "acme-tls/1"."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import ssl

from cryptography import x509

from server.errors import ValidationFailure
from server.va.resolve import ValidationSettings, ip_literal, resolve

ACME_TLS_1 = "acme-tls/1"
ID_PE_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")


def _client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The certificate is self-signed by design (RFC 8737 §3): trust comes from the digest.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([ACME_TLS_1])
    return ctx


def sni_for(identifier: str) -> str:
    """SNI to send: the name itself, or for an IP its reverse-DNS name (RFC 8738 §6)."""
    literal = ip_literal(identifier)
    return ipaddress.ip_address(literal).reverse_pointer if literal else identifier


def expected_extension_value(key_authorization: str) -> bytes:
    """DER of the acmeIdentifier value: OCTET STRING (tag 4, length 32) of SHA-256(keyAuth).

    The encoding is fixed, so comparing whole DER values is stricter than decoding the
    certificate's value: a non-minimal length or trailing bytes also fail."""
    return b"\x04\x20" + hashlib.sha256(key_authorization.encode()).digest()


class TlsAlpn01Validator:
    """Holds one SSLContext (building one per validation is the costly part)."""

    def __init__(self, settings: ValidationSettings) -> None:
        self.settings = settings
        self._ctx = _client_context()

    async def validate(self, identifier: str, key_authorization: str) -> None:
        try:
            async with asyncio.timeout(self.settings.timeout):
                der = await self._fetch_certificate(identifier)
        except TimeoutError:
            raise ValidationFailure("connection", f"{identifier}: Timeout after "
                                                  f"{self.settings.timeout:g}s during "
                                                  f"tls-alpn-01 connection") from None
        check_certificate(identifier, der, key_authorization)

    async def _fetch_certificate(self, identifier: str) -> bytes:
        port = self.settings.tls_port
        failure: ValidationFailure | None = None
        # Try each address in turn; a TLS-level answer is final (the node was reached).
        for addr in await resolve(identifier, self.settings):
            try:
                _, writer = await asyncio.open_connection(
                    addr, port, ssl=self._ctx, server_hostname=sni_for(identifier))
            except ssl.SSLError as exc:
                raise ValidationFailure("tls", f"{addr}:{port}: TLS handshake for tls-alpn-01 "
                                               f"failed: {exc.reason or exc}") from None
            except OSError as exc:
                failure = ValidationFailure("connection", f"{addr}:{port}: Connection refused "
                                                          f"or unreachable ({exc.strerror or exc})")
                continue
            try:
                sslobj = writer.get_extra_info("ssl_object")
                if sslobj is None or sslobj.selected_alpn_protocol() != ACME_TLS_1:
                    raise ValidationFailure("tls", f"{addr}:{port}: Cannot negotiate ALPN "
                                                   f"protocol {ACME_TLS_1!r} for tls-alpn-01")
                der: bytes | None = sslobj.getpeercert(binary_form=True)
                if not der:
                    raise ValidationFailure("tls", f"{addr}:{port}: no certificate presented")
                return der
            finally:
                # Nothing more to say to the node; skip the close_notify round trip.
                writer.transport.abort()
        assert failure is not None  # resolve() never returns an empty list
        raise failure


def check_certificate(identifier: str, der: bytes, key_authorization: str) -> None:
    """RFC 8737 §3: exactly one SAN, the identifier; a critical acmeIdentifier extension
    holding SHA-256 of the key authorization."""
    try:
        cert = x509.load_der_x509_certificate(der)
        exts = cert.extensions  # raises on duplicate or malformed extensions
        san = exts.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise _unauthorized(identifier, "certificate has no subjectAltName") from None
    except ValueError as exc:
        raise _unauthorized(identifier, f"certificate could not be parsed: {exc}") from None
    names = list(san)
    literal = ip_literal(identifier)
    want: x509.GeneralName = (x509.IPAddress(ipaddress.ip_address(literal)) if literal
                              else x509.DNSName(identifier.lower()))
    got = [x509.DNSName(n.value.lower()) if isinstance(n, x509.DNSName) else n for n in names]
    if got != [want]:
        shown = ", ".join(str(getattr(n, "value", n)) for n in names)
        raise _unauthorized(identifier, f"requested {identifier}, certificate names {shown}; "
                                        f"it must name exactly {identifier}")
    try:
        ext = exts.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    except x509.ExtensionNotFound:
        raise _unauthorized(identifier, "certificate has no acmeIdentifier extension") from None
    if not ext.critical:
        raise _unauthorized(identifier, "acmeIdentifier extension is not critical")
    value = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
    if not hmac.compare_digest(value, expected_extension_value(key_authorization)):
        raise ValidationFailure("incorrectResponse", f"{identifier}: Incorrect validation "
                                f"certificate for tls-alpn-01: acmeIdentifier extension value "
                                f"does not match the key authorization")


def _unauthorized(identifier: str, why: str) -> ValidationFailure:
    return ValidationFailure("unauthorized", f"{identifier}: Incorrect validation certificate "
                                             f"for tls-alpn-01 challenge: {why}")


async def validate_tls_alpn01(identifier: str, key_authorization: str,
                              settings: ValidationSettings) -> None:
    await TlsAlpn01Validator(settings).validate(identifier, key_authorization)
