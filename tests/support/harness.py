"""The API test harness: a real app on a real SQLite file and CA, driven over HTTP by
`AcmeTestClient`, with a real http-01 responder on loopback. Fixtures are in
tests/api/conftest.py; test modules import the types from here (a `conftest` module name
is shared by every test folder, so importing from it is ambiguous)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.api.context import API, ApiContext
from support.acmeclient import AcmeTestClient, Key, Reply, b64u, csr_der


class Http01Responder:
    """Serves /.well-known/acme-challenge/<token> for whatever tokens a test provisions."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.server: TestServer | None = None

    async def start(self) -> int:
        app = web.Application()

        async def answer(request: web.Request) -> web.Response:
            body = self.tokens.get(request.match_info["token"])
            return web.Response(text=body) if body else web.Response(status=404)

        app.router.add_get("/.well-known/acme-challenge/{token}", answer)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        assert self.server.port is not None
        return self.server.port


def base_config(tmp_path: Path, http_port: int) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:14999", "data_dir": str(tmp_path / "data"),
                   "base_url": "http://test.invalid"},
        "validation": {"http_port": http_port, "tls_port": 1, "timeout": "3s",
                       "hosts": {"*": "127.0.0.1"}},
        "profiles": {"default": {"description": "24 hours", "lifetime": "24h"},
                     "shortlived": {"description": "6 hours", "lifetime": "6h"}},
    }


class Harness:
    """One server under test plus the helpers tests keep needing."""

    def __init__(self, http: TestClient, app: web.Application, responder: Http01Responder) -> None:
        self.http, self.app, self.responder = http, app, responder

    @property
    def ctx(self) -> ApiContext:
        return self.app[API]

    async def client(self, key: Key | None = None) -> AcmeTestClient:
        return await AcmeTestClient(self.http, "http://test.invalid", key=key or Key()).start()

    async def account(self, key: Key | None = None, **payload: Any) -> AcmeTestClient:
        c = await self.client(key)
        r = await c.new_account(**payload)
        assert r.status == 201, r.body
        return c

    async def authorize(self, c: AcmeTestClient, order: dict[str, Any]) -> None:
        """Answer http-01 for every pending authorization of an order and wait for results."""
        for authz_url in order["authorizations"]:
            authz = (await c.post(authz_url)).json
            if authz["status"] != "pending":
                continue
            ch = next(x for x in authz["challenges"] if x["type"] == "http-01")
            self.responder.tokens[ch["token"]] = f"{ch['token']}.{c.key.thumbprint}"
            r = await c.post(ch["url"], {})
            assert r.status == 200, r.body
        await self.ctx.orders.drain()

    async def ready_order(self, c: AcmeTestClient, *names: str, **extra: Any) -> Reply:
        r = await c.new_order(*names, **extra)
        assert r.status == 201, r.body
        await self.authorize(c, r.json)
        order = await c.post(r.location)
        assert order.json["status"] == "ready", order.json
        return order

    async def issue(self, c: AcmeTestClient, *names: str, key: Any = None,
                    **extra: Any) -> tuple[Reply, bytes, Any]:
        """Full enrollment; returns (final order reply, leaf PEM chain, certificate key)."""
        order = await self.ready_order(c, *names, **extra)
        der, cert_key = csr_der(list(names), key)
        fin = await c.post(order.json["finalize"], {"csr": b64u(der)})
        assert fin.status == 200 and fin.json["status"] == "valid", fin.body
        pem = await c.post(fin.json["certificate"])
        assert pem.status == 200, pem.body
        return fin, pem.body, cert_key


MakeHarness = Callable[..., Awaitable[Harness]]


def assert_problem(r: Reply, status: int, code: str, *fragments: str) -> dict[str, Any]:
    """The reply is an ACME problem `code` with HTTP `status` whose detail names every fragment."""
    assert r.status == status, (r.status, r.body)
    assert r.problem == code, r.body
    doc: dict[str, Any] = r.json
    for fragment in fragments:
        assert fragment in doc["detail"], (fragment, doc["detail"])
    return doc
