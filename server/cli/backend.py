"""Where the operator commands run: on the data dir's SQLite file (`LocalBackend`), or
against a running server's admin API (`RemoteBackend`, `--server-admin URL`).

Both take the same operation names and JSON-able parameters and give back the same data,
so the commands and their output are written once (server.cli.nodes, server.cli.eab) and
the actions themselves once (server.ops).
"""
from __future__ import annotations

import getpass
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

from server import ops
from server.cli.output import CliError
from server.config import parse_duration
from server.store.repo import Store


class Backend(Protocol):
    def call(self, op: str, **params: Any) -> Any: ...

    def close(self) -> None: ...


def _duration(value: str | None) -> Any:
    return parse_duration(value, "--expiring-within", "nodetrust") if value else None


class LocalBackend:
    """The data dir directly (SQLite WAL lets this run beside a live server)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.actor = f"cli:{getpass.getuser()}"

    def close(self) -> None:
        self.store.close()

    def call(self, op: str, **p: Any) -> Any:
        s, now, who = self.store, datetime.now(timezone.utc), self.actor
        table: dict[str, Callable[[], Any]] = {
            "nodes.list": lambda: ops.list_nodes(s, now, owner=p.get("owner"),
                                                 status=p.get("status"),
                                                 expiring_within=_duration(p.get("expiring_within"))),
            "nodes.show": lambda: ops.show_node(s, p["node"]),
            "nodes.approve": lambda: ops.approve(s, p["node"], now=now, actor=who),
            "nodes.readmit": lambda: ops.readmit(s, p["node"], now=now, actor=who),
            "nodes.decommission": lambda: ops.decommission(s, p["node"], now=now, actor=who),
            "nodes.set_owner": lambda: ops.set_owner(s, p["node"], p["owner"], now=now, actor=who),
            "nodes.label": lambda: ops.set_labels(s, p["node"], p["labels"], now=now, actor=who),
            "revoke": lambda: ops.revoke(s, serial=p.get("serial"), node=p.get("node"),
                                         reason=p.get("reason", "unspecified"), now=now, actor=who),
            "bootstrap.list": lambda: ops.bootstrap_list(s),
            "bootstrap.deny": lambda: ops.bootstrap_deny(s, p["value"], serial=p["serial"],
                                                         note=p.get("note", ""), now=now, actor=who),
            "bootstrap.allow": lambda: ops.bootstrap_allow(s, p["value"], serial=p["serial"],
                                                           now=now, actor=who),
            "eab.create": lambda: ops.eab_create(s, p.get("note", ""), now=now, actor=who),
            "eab.list": lambda: ops.eab_list(s),
            "eab.revoke": lambda: ops.eab_revoke(s, p["kid"], now=now, actor=who),
            "audit.list": lambda: ops.audit_list(s, node=p.get("node"), event=p.get("event"),
                                                 limit=p.get("limit")),
            "audit.verify": lambda: ops.audit_verify(s),
        }
        if op not in table:
            raise CliError(f"{op} is not available on the data dir")
        try:
            return table[op]()
        except ops.OpsError as exc:
            raise CliError(exc.message) from None


# operation -> (method, path template); the remaining parameters go in the query (GET) or
# the JSON body (POST). The admin API (server.admin.api) serves exactly these.
ROUTES: dict[str, tuple[str, str]] = {
    "nodes.list": ("GET", "/admin/nodes"),
    "nodes.show": ("GET", "/admin/nodes/{node}"),
    "nodes.approve": ("POST", "/admin/nodes/{node}/approve"),
    "nodes.readmit": ("POST", "/admin/nodes/{node}/readmit"),
    "nodes.decommission": ("POST", "/admin/nodes/{node}/decommission"),
    "nodes.set_owner": ("POST", "/admin/nodes/{node}/set-owner"),
    "nodes.label": ("POST", "/admin/nodes/{node}/label"),
    "revoke": ("POST", "/admin/revoke"),
    "bootstrap.list": ("GET", "/admin/bootstrap"),
    "bootstrap.deny": ("POST", "/admin/bootstrap/deny"),
    "bootstrap.allow": ("POST", "/admin/bootstrap/allow"),
    "eab.create": ("POST", "/admin/eab"),
    "eab.list": ("GET", "/admin/eab"),
    "eab.revoke": ("POST", "/admin/eab/{kid}/revoke"),
    "audit.list": ("GET", "/admin/audit"),
    "audit.verify": ("GET", "/admin/audit/verify"),
}


class RemoteBackend:
    """A running server's admin API over HTTPS, with the bearer token from admin.token."""

    def __init__(self, url: str, token: str, cafile: Path | None, timeout: float = 30.0) -> None:
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        # Never through a proxy the environment may name: the admin API is loopback/LAN.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                  urllib.request.HTTPSHandler(context=ctx))

    def close(self) -> None:
        pass

    def call(self, op: str, **params: Any) -> Any:
        if op not in ROUTES:
            raise CliError(f"{op} is not available through the admin API")
        method, template = ROUTES[op]
        path = template
        for name in [k for k in params if "{" + k + "}" in template]:
            path = path.replace("{" + name + "}", urllib.parse.quote(str(params.pop(name)), safe=""))
        params = {k: v for k, v in params.items() if v is not None}
        body = None
        if method == "GET" and params:
            path += "?" + urllib.parse.urlencode(params)
        elif method == "POST":
            body = json.dumps(params).encode()
        return self.request(method, path, body)

    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/json",
            **({"Content-Type": "application/json"} if body is not None else {})})
        try:
            with self.opener.open(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise CliError(_http_error(self.url, exc)) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLError):
                raise CliError(f"TLS to the admin API at {self.url} failed: {reason}; pass "
                               "--admin-ca with the server's root (<data-dir>/ca/root.pem)") from None
            text = getattr(reason, "strerror", None) or str(reason)
            raise CliError(f"cannot reach the admin API at {self.url}: {text} (is "
                           "nodetrust-server running with [admin] listen set?)") from None
        except (TimeoutError, OSError) as exc:
            raise CliError(f"the admin API at {self.url} did not answer: {exc}") from None
        except ValueError:
            raise CliError(f"the admin API at {self.url} sent something that is not JSON") from None


def _http_error(url: str, exc: urllib.error.HTTPError) -> str:
    if exc.code == 401:
        return (f"the admin API at {url} refused the token (401): pass --admin-token-file "
                "with the server's <data-dir>/admin.token")
    try:
        detail = json.loads(exc.read()).get("detail")
    except (ValueError, AttributeError, OSError):
        detail = None
    return str(detail or f"the admin API answered {exc.code} {exc.reason}")


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise CliError(f"cannot read the admin token {path}: {exc.strerror or exc} (it is "
                       "<data-dir>/admin.token on the server; pass --admin-token-file)") from None
    if not token:
        raise CliError(f"{path} is empty")
    return token
