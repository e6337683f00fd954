"""A real nodetrust server app served over HTTPS in the test's own event loop, restartable
on the same data dir and port (a restart is a new app on the same SQLite file and CA, as
`nodetrust-server` would do)."""
from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from server.api.context import API
from server.api.handlers_feed import FEED
from server.app import create_app
from server.config import ServerConfig, parse_config
from server.feed import RevocationFeed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodetrustTls:
    def __init__(self, workdir: Path, http01_port: int, **tables: dict[str, Any]) -> None:
        self.port = free_port()
        raw: dict[str, Any] = {
            "server": {"listen": f"127.0.0.1:{self.port}", "data_dir": str(workdir / "data")},
            "validation": {"http_port": http01_port, "tls_port": 1, "timeout": "3s",
                           "hosts": {"*": "127.0.0.1"}},
        }
        for name, table in tables.items():
            raw[name] = {**raw.get(name, {}), **table}
        self.cfg: ServerConfig = parse_config(raw, "test.toml", workdir)
        self._server: TestServer | None = None

    @property
    def url(self) -> str:
        return self.cfg.url

    @property
    def feed_url(self) -> str:
        return f"{self.cfg.url}/feed/revocations"

    @property
    def root(self) -> Path:
        return self.cfg.ca_dir / "root.pem"

    @property
    def token(self) -> str:
        return self.cfg.feed_token_path.read_text().strip()

    @property
    def feed(self) -> RevocationFeed:
        assert self._server is not None
        return self._server.app[FEED]  # type: ignore[index]

    async def start(self) -> None:
        app = create_app(self.cfg)
        cert, key = app[API].issuance.d.ca.server_certificate(["127.0.0.1", "localhost"],
                                                              self.cfg.data_dir / "tls")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self._server = TestServer(app, host="127.0.0.1", port=self.port)
        await self._server.start_server(ssl=ctx)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None
