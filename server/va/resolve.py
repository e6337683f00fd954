"""Name resolution for the validation authority.

Every challenge checker resolves through `resolve()` so that static overrides (`hosts`, like
Pebble's), a dedicated DNS server (like Pebble's `-dnsserver`) and the system resolver behave
the same for http-01 and tls-alpn-01.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from server.errors import ValidationFailure

if TYPE_CHECKING:
    import dns.asyncresolver


@dataclass(frozen=True)
class ValidationSettings:
    http_port: int = 80  # port for http-01
    tls_port: int = 443  # port for tls-alpn-01
    timeout: float = 10.0  # whole validation, seconds
    # static name -> IP address; the '*' key is the default for every name
    hosts: Mapping[str, str] = field(default_factory=dict)
    # "ip:port" (or "[v6]:port", port defaults to 53) of a DNS server asked for A/AAAA;
    # None -> the system resolver, so /etc/hosts works
    dns_server: str | None = None
    # How long a challenge response waits for its validation before answering
    # `processing`: a fast validation then answers `valid` and saves the client a poll.
    respond_wait: float = 2.0


def ip_literal(name: str) -> str | None:
    """The canonical text of `name` if it is an IP address (brackets allowed), else None."""
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return None


async def resolve(name: str, settings: ValidationSettings) -> list[str]:
    """IP addresses to try for `name`, in preference order, without duplicates.

    Raises ValidationFailure("dns") when nothing resolves.
    """
    literal = ip_literal(name)
    if literal is not None:
        return [literal]
    # DNS names are case-insensitive and may carry the root's trailing dot.
    key = name.rstrip(".").lower()
    override = settings.hosts.get(key, settings.hosts.get("*"))
    if override is not None:
        return [override]
    if settings.dns_server is not None:
        addrs = await _ask_dns_server(key, settings)
    else:
        addrs = await _ask_system(key)
    if not addrs:
        raise ValidationFailure("dns", f"DNS problem: no valid A or AAAA records found for {key}")
    return addrs


async def _ask_system(name: str) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValidationFailure("dns", f"DNS problem: looking up {name}: {exc}") from None
    # getaddrinfo returns one entry per (family, proto); dict keeps first-seen order.
    seen = {str(info[4][0]).split("%", 1)[0]: None for info in infos}
    return list(seen)


def _split_server(server: str) -> tuple[str, int]:
    host, sep, port = server.rpartition(":")
    if not sep or (host.count(":") and not host.startswith("[")):
        return server.strip("[]"), 53  # bare address (v4, or v6 without brackets)
    return host.strip("[]"), int(port)


@functools.lru_cache(maxsize=8)
def _dns_resolver(server: str, timeout: float) -> dns.asyncresolver.Resolver:
    # Imported here so dnspython is only needed by deployments that set dns_server.
    import dns.asyncresolver

    host, port = _split_server(server)
    res = dns.asyncresolver.Resolver(configure=False)
    res.nameservers = [host]
    res.port = port
    res.lifetime = timeout
    res.cache = None  # a validation must see the records as they are now
    return res


async def _ask_dns_server(name: str, settings: ValidationSettings) -> list[str]:
    import dns.exception
    import dns.resolver

    assert settings.dns_server is not None
    res = _dns_resolver(settings.dns_server, settings.timeout)

    async def query(rdtype: str) -> list[str]:
        try:
            answer = await res.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.Timeout:
            raise ValidationFailure("dns", f"DNS problem: query timed out looking up "
                                           f"{rdtype} for {name}") from None
        except dns.exception.DNSException as exc:
            raise ValidationFailure("dns", f"DNS problem: looking up {rdtype} for {name}: "
                                           f"{exc}") from None
        return [rr.address for rr in answer]

    # Both families are asked at once (Boulder does the same); IPv6 first as Boulder prefers it.
    v6, v4 = await asyncio.gather(query("AAAA"), query("A"))
    return list(dict.fromkeys(v6 + v4))
