"""RFC 4043 PermanentIdentifier, the one ASN.1 structure `cryptography` does not parse:

    PermanentIdentifier ::= SEQUENCE {
        identifierValue  UTF8String             OPTIONAL,
        assigner         OBJECT IDENTIFIER      OPTIONAL }

It travels as an otherName SAN (OID 1.3.6.1.5.5.7.8.3). We encode identifierValue only and
decode both members; the ACME identifier value is `value["/" assigner-OID]`
(draft-ietf-acme-device-attest §3)."""
from __future__ import annotations

from cryptography import x509

OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.3")
_SEQUENCE, _UTF8STRING, _OID = 0x30, 0x0C, 0x06


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def encode(identifier_value: str) -> bytes:
    return _tlv(_SEQUENCE, _tlv(_UTF8STRING, identifier_value.encode("utf-8")))


def _read_tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, content, next position); ValueError on anything but definite DER lengths."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, data[pos:pos + length], pos + length


def _oid_text(content: bytes) -> str:
    arcs, value = [], 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        raise ValueError("empty OID")
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def decode(der: bytes) -> tuple[str | None, str | None]:
    """(identifierValue, assigner OID) of a DER PermanentIdentifier."""
    tag, seq, end = _read_tlv(der, 0)
    if tag != _SEQUENCE or end != len(der):
        raise ValueError("PermanentIdentifier is not one DER SEQUENCE")
    value = assigner = None
    pos = 0
    while pos < len(seq):
        tag, content, pos = _read_tlv(seq, pos)
        if tag == _UTF8STRING and value is None and assigner is None:
            value = content.decode("utf-8")
        elif tag == _OID and assigner is None:
            assigner = _oid_text(content)
        else:
            raise ValueError(f"unexpected DER tag 0x{tag:02x} in PermanentIdentifier")
    return value, assigner


def from_certificate(cert: x509.Certificate) -> list[str]:
    """ACME permanent-identifier values of a certificate's SAN (`value` or `value/assigner`)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out = []
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id != OID:
            continue
        value, assigner = decode(other.value)
        if value:
            out.append(f"{value}/{assigner}" if assigner else value)
    return out
