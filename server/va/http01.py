"""http-01 (RFC 8555 §8.3): fetch the key authorization over plain HTTP.

Redirect and size rules follow Boulder's va/http.go, so clients that pass Let's Encrypt pass here.
"""
from __future__ import annotations

import asyncio
import hmac
import re
import socket
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from server.errors import ValidationFailure
from server.va.resolve import ValidationSettings, ip_literal, resolve

MAX_REDIRECTS = 10
MAX_BODY = 8 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Tokens come from our own RA, but they land in a URL path: refuse anything that could
# escape /.well-known/acme-challenge/ (e.g. "../", "?", "#").
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")
_SHOWN = 64  # how much of a wrong body the detail may quote


class _SettingsResolver(AbstractResolver):
    """Makes aiohttp connect through `resolve()` (hosts overrides, dns_server, system)."""

    def __init__(self, settings: ValidationSettings) -> None:
        self._settings = settings

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        out: list[ResolveResult] = []
        for addr in await resolve(host, self._settings):
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            if family in (socket.AF_UNSPEC, fam):
                out.append(ResolveResult(hostname=host, host=addr, port=port, family=fam,
                                         proto=0, flags=socket.AI_NUMERICHOST))
        if not out:
            raise ValidationFailure("dns", f"DNS problem: no usable address for {host}")
        return out

    async def close(self) -> None:
        pass


@dataclass
class _Progress:
    """Where a validation got to, so a timeout can say which URL hung."""

    url: URL


class Http01Validator:
    """One pooled ClientSession for all http-01 validations (creating one per request costs
    more than the validation itself on loopback). Created lazily: needs a running loop."""

    def __init__(self, settings: ValidationSettings, max_connections: int = 256) -> None:
        self.settings = settings
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=_SettingsResolver(self.settings),
                # A cached answer or a kept-alive socket could reach an address the name no
                # longer points to; Boulder also dials afresh for every validation.
                use_dns_cache=False,
                force_close=True,
                limit=self._max_connections,
                # https is only reached through redirects; RFC 8555 §8.3 asks for the body,
                # not a trusted certificate (Let's Encrypt ignores it too).
                ssl=False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # Cookies must never carry over from one validation to another.
                cookie_jar=aiohttp.DummyCookieJar(),
                # Compare the bytes as sent; never inflate a compressed body.
                auto_decompress=False,
                headers={"User-Agent": "nodetrust-va", "Accept-Encoding": "identity"},
                timeout=aiohttp.ClientTimeout(total=None),  # validate() sets the deadline
                trust_env=False,  # no HTTP(S)_PROXY: we must reach the node itself
            )
        return self._session

    async def validate(self, identifier: str, token: str, key_authorization: str) -> None:
        """Raise ValidationFailure unless the node serves `key_authorization` for `token`."""
        if not _TOKEN_RE.fullmatch(token):
            raise ValidationFailure("malformed", "challenge token is not base64url")
        host = ip_literal(identifier) or identifier
        url = URL.build(scheme="http", host=host, port=self.settings.http_port,
                        path=f"/.well-known/acme-challenge/{token}")
        progress = _Progress(url)
        try:
            async with asyncio.timeout(self.settings.timeout):
                body = await self._fetch(identifier, url, progress)
        except TimeoutError:
            raise ValidationFailure(
                "connection", f"{identifier}: Timeout after {self.settings.timeout:g}s "
                              f"fetching {progress.url}") from None
        except aiohttp.ClientConnectorSSLError as exc:
            raise ValidationFailure("tls", f"{identifier}: fetching {progress.url}: "
                                           f"{exc.os_error}") from None
        except aiohttp.ClientConnectorError as exc:
            raise ValidationFailure("connection", f"{identifier}: Fetching {progress.url}: "
                                                  f"Connection refused or unreachable "
                                                  f"({exc.os_error})") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ValidationFailure("connection", f"{identifier}: Fetching {progress.url}: "
                                                  f"{type(exc).__name__}: {exc}") from None
        _check_body(identifier, body.strip(), key_authorization)

    async def _fetch(self, identifier: str, url: URL, progress: _Progress) -> bytes:
        session = self._get_session()
        # The first request names the identifier itself, without our (maybe non-standard)
        # port, as Boulder does; later hops let aiohttp derive Host from the redirect URL.
        headers: dict[str, str] = {"Host": _host_header(identifier)}
        for _ in range(MAX_REDIRECTS + 1):
            progress.url = url
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                location = resp.headers.get("Location")
                if resp.status in _REDIRECT_STATUSES and location is not None:
                    url = self._redirect_target(identifier, url, location)
                    headers = {}
                    continue
                if resp.status != 200:
                    raise ValidationFailure(
                        "unauthorized", f"{identifier}: Invalid response from {url}: {resp.status}")
                return await _read_limited(resp)
        raise ValidationFailure("connection", f"{identifier}: Too many redirects (more than "
                                              f"{MAX_REDIRECTS}), last to {url}")

    def _redirect_target(self, identifier: str, current: URL, location: str) -> URL:
        try:
            target = current.join(URL(location))
        except ValueError:
            raise ValidationFailure("connection", f"{identifier}: Invalid redirect from {current} "
                                                  f"to {location[:_SHOWN]!r}") from None
        if target.scheme not in ("http", "https") or not target.host:
            raise ValidationFailure("connection", f"{identifier}: Invalid redirect target "
                                                  f"{target}: only http and https are followed")
        # Boulder's rule: only the two validation ports, whichever the scheme.
        allowed = (self.settings.http_port, self.settings.tls_port)
        if target.port not in allowed:
            raise ValidationFailure(
                "connection", f"{identifier}: Invalid port in redirect target {target}: only ports "
                              f"{allowed[0]} and {allowed[1]} are supported, not {target.port}")
        return target

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _host_header(identifier: str) -> str:
    literal = ip_literal(identifier)
    if literal is not None and ":" in literal:
        return f"[{literal}]"
    return literal or identifier


async def _read_limited(resp: aiohttp.ClientResponse) -> bytes:
    # read(n) returns at most one chunk: loop until MAX_BODY bytes or end of body.
    buf = bytearray()
    while len(buf) < MAX_BODY:
        chunk = await resp.content.read(MAX_BODY - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _check_body(identifier: str, body: bytes, key_authorization: str) -> None:
    if hmac.compare_digest(body, key_authorization.encode()):
        return
    got = body.decode("utf-8", errors="replace")
    shown = got[:_SHOWN] + ("..." if len(got) > _SHOWN else "")
    raise ValidationFailure(
        "incorrectResponse", f"{identifier}: The key authorization file from the server did not "
                             f"match this challenge. Expected {key_authorization!r} "
                             f"(got {shown!r})")


async def validate_http01(identifier: str, token: str, key_authorization: str,
                          settings: ValidationSettings) -> None:
    """One-off validation; long-lived callers should keep an Http01Validator instead."""
    validator = Http01Validator(settings)
    try:
        await validator.validate(identifier, token, key_authorization)
    finally:
        await validator.close()
