"""One shared in-process http-01 responder (aiohttp) for every worker and every target."""

from __future__ import annotations

import socket

from aiohttp import web

PREFIX = "/.well-known/acme-challenge/"


class Http01Responder:
    """Serves key authorizations at http://127.0.0.1:<port>/.well-known/acme-challenge/<token>."""

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.hits = 0
        self.misses = 0

    def add(self, token: str, key_authorization: str) -> None:
        self._tokens[token] = key_authorization

    def remove(self, token: str) -> None:
        self._tokens.pop(token, None)

    async def _handle(self, request: web.Request) -> web.Response:
        value = self._tokens.get(request.match_info["token"])
        if value is None:
            self.misses += 1
            return web.Response(status=404, text="unknown token")
        self.hits += 1
        return web.Response(text=value, content_type="text/plain")

    async def start(self, port: int = 0) -> int:
        app = web.Application()
        app.router.add_get(PREFIX + "{token}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1024)
        sock.setblocking(False)
        await web.SockSite(self._runner, sock).start()
        self.port = int(sock.getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
