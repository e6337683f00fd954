"""http-01 (RFC 8555 §8.3): fetch the key authorization over plain HTTP.

Redirect and size rules follow Boulder's va/http.go, so clients that pass Let's Encrypt pass here.
"""
from __future__ import annotations

import asyncio
import hmac
import re
import ssl
from dataclasses import dataclass

import httptools
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


@dataclass
class _Progress:
    """Where a validation got to, so a timeout can say which URL hung."""

    url: URL


class Http01Validator:
    """http-01 over a lean HTTP/1.1 client: one GET per hop on a fresh connection (a kept-
    alive socket could reach an address the name no longer points to; Boulder dials afresh
    too), parsed with llhttp (httptools). aiohttp's client machinery cost more CPU than the
    rest of a validation (py-spy, scripts/bench-enroll)."""

    def __init__(self, settings: ValidationSettings, max_connections: int = 256) -> None:
        self.settings = settings
        # Bounds concurrent outbound connections, as the old connector's limit did.
        self._slots = asyncio.Semaphore(max_connections)
        # https is only reached through redirects; RFC 8555 §8.3 asks for the body, not a
        # trusted certificate (Let's Encrypt ignores it too).
        self._tls = ssl.create_default_context()
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE

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
        except ssl.SSLError as exc:
            raise ValidationFailure("tls", f"{identifier}: fetching {progress.url}: "
                                           f"{exc}") from None
        except httptools.HttpParserError as exc:
            raise ValidationFailure("connection", f"{identifier}: Fetching {progress.url}: "
                                                  f"malformed HTTP response ({exc})") from None
        except OSError as exc:
            raise ValidationFailure("connection", f"{identifier}: Fetching {progress.url}: "
                                                  f"{type(exc).__name__}: {exc}") from None
        _check_body(identifier, body.strip(), key_authorization)

    async def _fetch(self, identifier: str, url: URL, progress: _Progress) -> bytes:
        # The first request names the identifier itself, without our (maybe non-standard)
        # port, as Boulder does; later hops name the redirect URL's host and port.
        host = _host_header(identifier)
        for _ in range(MAX_REDIRECTS + 1):
            progress.url = url
            async with self._slots:
                reply = await self._get(url, host)
            if reply.status in _REDIRECT_STATUSES and reply.location is not None:
                url = self._redirect_target(identifier, url, reply.location)
                host = _host_header(url.raw_host or "") + (
                    "" if url.is_default_port() else f":{url.port}")
                continue
            if reply.status != 200:
                raise ValidationFailure(
                    "unauthorized", f"{identifier}: Invalid response from {url}: {reply.status}")
            return bytes(reply.body[:MAX_BODY])
        raise ValidationFailure("connection", f"{identifier}: Too many redirects (more than "
                                              f"{MAX_REDIRECTS}), last to {url}")

    def _redirect_target(self, identifier: str, current: URL, location: str) -> URL:
        try:
            target = current.join(URL(location))
        except ValueError:
            raise ValidationFailure("connection", f"{identifier}: Invalid redirect from {current} "
                                                  f"to {location[:_SHOWN]!r}") from None
        if target.scheme not in ("http", "https") or not target.raw_host:
            raise ValidationFailure("connection", f"{identifier}: Invalid redirect target "
                                                  f"{target}: only http and https are followed")
        # Boulder's rule: only the two validation ports, whichever the scheme.
        allowed = (self.settings.http_port, self.settings.tls_port)
        if target.port not in allowed:
            raise ValidationFailure(
                "connection", f"{identifier}: Invalid port in redirect target {target}: only ports "
                              f"{allowed[0]} and {allowed[1]} are supported, not {target.port}")
        return target

    async def _get(self, url: URL, host_header: str) -> _Reply:
        assert url.raw_host is not None and url.port is not None
        https = url.scheme == "https"
        last: OSError | None = None
        for addr in await resolve(url.raw_host, self.settings):
            try:
                reader, writer = await asyncio.open_connection(
                    addr, url.port, ssl=self._tls if https else None,
                    server_hostname=(None if ip_literal(url.raw_host) else url.raw_host) if https else None)
                break
            except OSError as exc:  # try the next address, as a dialer would
                last = exc
        else:
            raise ValidationFailure("connection", f"Fetching {url}: Connection refused or "
                                                  f"unreachable ({last})")
        try:
            writer.write(f"GET {url.raw_path_qs or '/'} HTTP/1.1\r\nHost: {host_header}\r\n"
                         "User-Agent: nodetrust-va\r\nAccept: */*\r\n"
                         "Accept-Encoding: identity\r\nConnection: close\r\n\r\n".encode())
            reply = _Reply()
            parser = httptools.HttpResponseParser(reply)
            while not reply.complete and len(reply.body) <= MAX_BODY:
                data = await reader.read(65536)
                if not data:  # a body without length ends with the connection
                    break
                parser.feed_data(data)
            if reply.status == 0:
                raise ValidationFailure("connection", f"Fetching {url}: no HTTP response")
            reply.status = parser.get_status_code()
            return reply
        finally:
            writer.close()

    async def close(self) -> None:
        pass  # nothing pooled: every validation dials afresh


class _Reply:
    """httptools callbacks: status, Location, and the body up to MAX_BODY."""

    def __init__(self) -> None:
        self.status = 0
        self.location: str | None = None
        self.body = bytearray()
        self.complete = False

    def on_status(self, status: bytes) -> None:
        self.status = -1  # known after the status line; the code comes from the parser

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"location":
            self.location = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if len(self.body) <= MAX_BODY:
            self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def _host_header(identifier: str) -> str:
    literal = ip_literal(identifier)
    if literal is not None and ":" in literal:
        return f"[{literal}]"
    return literal or identifier


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
