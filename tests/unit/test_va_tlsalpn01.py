"""tls-alpn-01 validation against a real asyncio TLS server on 127.0.0.1."""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Self

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.errors import ValidationFailure
from server.va.registry import ChallengeValidators
from server.va.resolve import ValidationSettings
from server.va.tlsalpn01 import ID_PE_ACME_IDENTIFIER, validate_tls_alpn01

KEYAUTH = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"


def challenge_cert(names: Sequence[x509.GeneralName], key_authorization: str = KEYAUTH, *,
                   critical: bool = True, with_extension: bool = True) -> tuple[bytes, bytes]:
    """The RFC 8737 §3 self-signed certificate, as (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme-tls-alpn-01")])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=7))
               .add_extension(x509.SubjectAlternativeName(names), critical=False))
    if with_extension:
        digest = hashlib.sha256(key_authorization.encode()).digest()
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, b"\x04\x20" + digest),
            critical=critical)
    cert = builder.sign(key, hashes.SHA256())
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


class TlsNode:
    """A node answering TLS on 127.0.0.1 with `pem`; records the SNI names it was sent."""

    def __init__(self, workdir: Path, pem: tuple[bytes, bytes], alpn: list[str] | None) -> None:
        (workdir / "cert.pem").write_bytes(pem[0])
        (workdir / "key.pem").write_bytes(pem[1])
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(workdir / "cert.pem", workdir / "key.pem")
        if alpn is not None:
            self.ctx.set_alpn_protocols(alpn)
        self.ctx.sni_callback = self._sni
        self.seen_sni: list[str | None] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    def _sni(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None,
             ctx: ssl.SSLContext) -> None:
        self.seen_sni.append(name)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await reader.read()  # until the validator hangs up
        writer.close()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


NodeFactory = Callable[..., TlsNode]


@pytest.fixture
def tls_node(tmp_path: Path) -> NodeFactory:
    def make(pem: tuple[bytes, bytes], alpn: list[str] | None = None) -> TlsNode:
        return TlsNode(tmp_path, pem, alpn)
    return make


@pytest.fixture
def closed_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


HOSTS = {"node1.test": "127.0.0.1"}
NODE1 = [x509.DNSName("node1.test")]


def settings(port: int) -> ValidationSettings:
    return ValidationSettings(tls_port=port, timeout=5.0, hosts=HOSTS)


async def expect_failure(identifier: str, port: int, keyauth: str = KEYAUTH) -> ValidationFailure:
    with pytest.raises(ValidationFailure) as err:
        await validate_tls_alpn01(identifier, keyauth, settings(port))
    return err.value


async def test_pass_for_dns_name(tls_node: NodeFactory) -> None:
    async with tls_node(challenge_cert(NODE1), alpn=["acme-tls/1"]) as node:
        await validate_tls_alpn01("node1.test", KEYAUTH, settings(node.port))
    assert node.seen_sni == ["node1.test"]


async def test_pass_for_ip_with_reverse_dns_sni(tls_node: NodeFactory) -> None:
    pem = challenge_cert([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    async with tls_node(pem, alpn=["acme-tls/1"]) as node:
        await validate_tls_alpn01("127.0.0.1", KEYAUTH, settings(node.port))
    assert node.seen_sni == ["1.0.0.127.in-addr.arpa"]  # RFC 8738 §6


async def test_wrong_digest_fails(tls_node: NodeFactory) -> None:
    pem = challenge_cert(NODE1, key_authorization="someone-else.thumbprint")
    async with tls_node(pem, alpn=["acme-tls/1"]) as node:
        failure = await expect_failure("node1.test", node.port)
    assert failure.code == "incorrectResponse"


async def test_no_alpn_selected_is_tls(tls_node: NodeFactory) -> None:
    async with tls_node(challenge_cert(NODE1)) as node:
        failure = await expect_failure("node1.test", node.port)
    assert failure.code == "tls"
    assert "acme-tls/1" in failure.detail


async def test_other_alpn_only_is_tls(tls_node: NodeFactory) -> None:
    async with tls_node(challenge_cert(NODE1), alpn=["h2"]) as node:
        failure = await expect_failure("node1.test", node.port)
    assert failure.code == "tls"


async def test_non_critical_extension_fails(tls_node: NodeFactory) -> None:
    pem = challenge_cert(NODE1, critical=False)
    async with tls_node(pem, alpn=["acme-tls/1"]) as node:
        failure = await expect_failure("node1.test", node.port)
    assert failure.code == "unauthorized"
    assert "critical" in failure.detail


async def test_missing_extension_fails(tls_node: NodeFactory) -> None:
    pem = challenge_cert(NODE1, with_extension=False)
    async with tls_node(pem, alpn=["acme-tls/1"]) as node:
        failure = await expect_failure("node1.test", node.port)
    assert failure.code == "unauthorized"


@pytest.mark.parametrize("names", [
    [x509.DNSName("node1.test"), x509.DNSName("other.test")],     # an extra name
    [x509.DNSName("other.test")],                                  # the wrong name
    [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],           # right address, wrong type
])
async def test_san_must_be_exactly_the_identifier(tls_node: NodeFactory,
                                                  names: list[x509.GeneralName]) -> None:
    async with tls_node(challenge_cert(names), alpn=["acme-tls/1"]) as node:
        failure = await expect_failure("node1.test", node.port)
    assert failure.code == "unauthorized"


async def test_nothing_listening_is_connection(closed_port: int) -> None:
    failure = await expect_failure("node1.test", closed_port)
    assert failure.code == "connection"


async def test_not_tls_is_tls_failure() -> None:
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain, "127.0.0.1", 0)
    try:
        failure = await expect_failure("node1.test", server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
    assert failure.code == "tls"


async def test_registry_dispatches_tls_alpn01(tls_node: NodeFactory) -> None:
    async with tls_node(challenge_cert(NODE1), alpn=["acme-tls/1"]) as node:
        validators = ChallengeValidators(settings(node.port))
        try:
            await validators.validate("tls-alpn-01", "dns", "node1.test", "token", KEYAUTH)
        finally:
            await validators.close()

