"""http-01 validation, name resolution and the validator registry, over real loopback sockets."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.errors import ValidationFailure
from server.va.http01 import Http01Validator, _host_header, validate_http01
from server.va.registry import ChallengeValidators
from server.va.resolve import ValidationSettings, resolve

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEYAUTH = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
CHALLENGE_PATH = f"/.well-known/acme-challenge/{TOKEN}"

ServerFactory = Callable[..., Awaitable[TestServer]]


class Node:
    """A node's challenge responder; `routes` maps path -> handler, `hosts` records Host."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hosts.append(request.headers.get("Host", ""))
        handler = self.routes.get(request.path)
        if handler is None:
            raise web.HTTPNotFound()
        return await handler(request)


def text(body: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=body)
    return handler


def redirect(location: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(location)
    return handler


@pytest.fixture
async def node(aiohttp_server: ServerFactory) -> tuple[Node, TestServer]:
    n = Node()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", n.handle)
    return n, await aiohttp_server(app)


@pytest.fixture
async def validator() -> AsyncIterator[Callable[[ValidationSettings], Http01Validator]]:
    made: list[Http01Validator] = []

    def make(settings: ValidationSettings) -> Http01Validator:
        made.append(Http01Validator(settings))
        return made[-1]
    yield make
    for v in made:
        await v.close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connects are refused and nobody else can take it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def settings_for(server: TestServer, **kw: Any) -> ValidationSettings:
    assert server.port is not None
    return ValidationSettings(http_port=server.port, timeout=5.0, **kw)


async def test_pass_with_ip_identifier(node: tuple[Node, TestServer]) -> None:
    n, server = node
    n.routes[CHALLENGE_PATH] = text(KEYAUTH + "\r\n")  # trailing whitespace is allowed
    await validate_http01("127.0.0.1", TOKEN, KEYAUTH, settings_for(server))
    assert n.hosts == ["127.0.0.1"]  # the identifier alone, without our test port


async def test_shared_validator_handles_concurrent_validations(
        node: tuple[Node, TestServer], validator: Callable[[ValidationSettings], Http01Validator],
) -> None:
    n, server = node
    n.routes[CHALLENGE_PATH] = text(KEYAUTH)
    v = validator(settings_for(server))
    await asyncio.gather(*(v.validate("127.0.0.1", TOKEN, KEYAUTH) for _ in range(50)))
    assert len(n.hosts) == 50


async def test_wrong_body_is_incorrect_response(node: tuple[Node, TestServer]) -> None:
    n, server = node
    n.routes[CHALLENGE_PATH] = text("x" * 200)
    with pytest.raises(ValidationFailure) as err:
        await validate_http01("127.0.0.1", TOKEN, KEYAUTH, settings_for(server))
    assert err.value.code == "incorrectResponse"
    assert "x" * 64 in err.value.detail and "x" * 65 not in err.value.detail


async def test_404_is_unauthorized(node: tuple[Node, TestServer]) -> None:
    _, server = node
    with pytest.raises(ValidationFailure) as err:
        await validate_http01("127.0.0.1", TOKEN, KEYAUTH, settings_for(server))
    assert err.value.code == "unauthorized"
    assert "404" in err.value.detail


async def test_nothing_listening_is_connection(closed_port: int) -> None:
    settings = ValidationSettings(http_port=closed_port, timeout=5.0)
    with pytest.raises(ValidationFailure) as err:
        await validate_http01("127.0.0.1", TOKEN, KEYAUTH, settings)
    assert err.value.code == "connection"


async def test_slow_server_times_out_as_connection(node: tuple[Node, TestServer]) -> None:
    n, server = node
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        await never.wait()
        raise AssertionError("unreachable")
    n.routes[CHALLENGE_PATH] = hang
    with pytest.raises(ValidationFailure) as err:
        await validate_http01("127.0.0.1", TOKEN, KEYAUTH,
                              ValidationSettings(http_port=server.port or 0, timeout=0.3))
    assert err.value.code == "connection"
    assert "Timeout" in err.value.detail


async def test_redirect_to_other_path_on_same_server(node: tuple[Node, TestServer]) -> None:
    n, server = node
    n.routes[CHALLENGE_PATH] = redirect("/elsewhere/keyauth")
    n.routes["/elsewhere/keyauth"] = text(KEYAUTH)
    await validate_http01("127.0.0.1", TOKEN, KEYAUTH, settings_for(server))
    assert len(n.hosts) == 2


async def test_redirect_to_forbidden_port_is_refused(node: tuple[Node, TestServer]) -> None:
    n, server = node
    n.routes[CHALLENGE_PATH] = redirect("http://127.0.0.1:1/x")
    with pytest.raises(ValidationFailure) as err:
        await validate_http01("127.0.0.1", TOKEN, KEYAUTH, settings_for(server))
    assert err.value.code == "connection"
    assert "port" in err.value.detail


async def test_redirect_to_other_scheme_is_refused(node: tuple[Node, TestServer]) -> None:
    n, server = node
    n.routes[CHALLENGE_PATH] = redirect(f"ftp://127.0.0.1:{server.port}/x")
    with pytest.raises(ValidationFailure) as err:
        await validate_http01("127.0.0.1", TOKEN, KEYAUTH, settings_for(server))
    assert err.value.code == "connection"


async def test_redirect_loop_stops(node: tuple[Node, TestServer]) -> None:
    n, server = node
    n.routes[CHALLENGE_PATH] = redirect(CHALLENGE_PATH)
    with pytest.raises(ValidationFailure) as err:
        await validate_http01("127.0.0.1", TOKEN, KEYAUTH, settings_for(server))
    assert err.value.code == "connection"
    assert len(n.hosts) == 11  # the first request and 10 redirects


async def test_name_mapped_via_hosts(node: tuple[Node, TestServer]) -> None:
    n, server = node
    n.routes[CHALLENGE_PATH] = text(KEYAUTH)
    settings = settings_for(server, hosts={"node1.test": "127.0.0.1"})
    await validate_http01("node1.test", TOKEN, KEYAUTH, settings)
    assert n.hosts == ["node1.test"]


async def test_wildcard_hosts_entry(node: tuple[Node, TestServer]) -> None:
    n, server = node
    n.routes[CHALLENGE_PATH] = text(KEYAUTH)
    await validate_http01("any.node.test", TOKEN, KEYAUTH,
                          settings_for(server, hosts={"*": "127.0.0.1"}))


async def test_unresolvable_name_is_dns() -> None:
    with pytest.raises(ValidationFailure) as err:
        await validate_http01("nonexistent.invalid", TOKEN, KEYAUTH,
                              ValidationSettings(timeout=5.0))
    assert err.value.code == "dns"


async def test_token_that_could_escape_the_path_is_malformed() -> None:
    with pytest.raises(ValidationFailure) as err:
        await validate_http01("127.0.0.1", "../../admin", KEYAUTH, ValidationSettings())
    assert err.value.code == "malformed"


def test_host_header_brackets_ipv6_literals() -> None:
    assert _host_header("2001:db8::1") == "[2001:db8::1]"
    assert _host_header("node1.test") == "node1.test"


async def test_resolve_system_ip_literal_and_hosts() -> None:
    assert await resolve("localhost", ValidationSettings()) != []
    assert await resolve("::1", ValidationSettings()) == ["::1"]
    assert await resolve("Node1.Test.", ValidationSettings(hosts={"node1.test": "10.0.0.7"})) \
        == ["10.0.0.7"]


# --- a dedicated DNS server (settings.dns_server), answered by a tiny UDP responder ---

class _DnsResponder(asyncio.DatagramProtocol):
    """Answers A/AAAA from `records`; NXDOMAIN for any other name."""

    def __init__(self, records: dict[str, str]) -> None:
        self.records = records
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        import dns.message
        import dns.rcode
        import dns.rdatatype
        import dns.rrset

        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True)
        if name not in self.records:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif q.rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", "A", self.records[name]))
        assert self.transport is not None
        self.transport.sendto(reply.to_wire(), addr)


@pytest.fixture
async def dns_server() -> AsyncIterator[str]:
    pytest.importorskip("dns.asyncresolver")
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _DnsResponder({"node2.test": "127.0.0.1"}), local_addr=("127.0.0.1", 0))
    yield f"127.0.0.1:{transport.get_extra_info('sockname')[1]}"
    transport.close()


async def test_dns_server_answers(node: tuple[Node, TestServer], dns_server: str) -> None:
    n, server = node
    n.routes[CHALLENGE_PATH] = text(KEYAUTH)
    settings = settings_for(server, dns_server=dns_server)
    assert await resolve("node2.test", settings) == ["127.0.0.1"]
    await validate_http01("node2.test", TOKEN, KEYAUTH, settings)
    with pytest.raises(ValidationFailure) as err:
        await resolve("nowhere.test", settings)
    assert err.value.code == "dns"


# --- the registry ---

async def test_registry_offers_and_dispatches(node: tuple[Node, TestServer]) -> None:
    n, server = node
    n.routes[CHALLENGE_PATH] = text(KEYAUTH)
    validators = ChallengeValidators(settings_for(server))
    try:
        assert validators.types_for("dns") == ["http-01", "tls-alpn-01"]
        assert validators.types_for("ip") == ["http-01", "tls-alpn-01"]
        assert validators.types_for("permanent-identifier") == []
        await validators.validate("http-01", "ip", "127.0.0.1", TOKEN, KEYAUTH)
        with pytest.raises(ValidationFailure) as err:
            await validators.validate("dns-01", "dns", "node.test", TOKEN, KEYAUTH)
        assert err.value.code == "malformed"
    finally:
        await validators.close()


async def test_registry_accepts_a_new_challenge_type() -> None:
    seen: list[tuple[str, ...]] = []

    async def device_attest(identifier_type: str, value: str, token: str, keyauth: str,
                            settings: ValidationSettings) -> None:
        seen.append((identifier_type, value, token, keyauth))

    validators = ChallengeValidators(ValidationSettings())
    validators.register("device-attest-01", device_attest, ["permanent-identifier"])
    assert validators.types_for("permanent-identifier") == ["device-attest-01"]
    await validators.validate("device-attest-01", "permanent-identifier", "SN1", TOKEN, KEYAUTH)
    assert seen == [("permanent-identifier", "SN1", TOKEN, KEYAUTH)]
    with pytest.raises(ValidationFailure) as err:
        await validators.validate("http-01", "permanent-identifier", "SN1", TOKEN, KEYAUTH)
    assert err.value.code == "malformed"
    await validators.close()
