"""Gateway configuration: TOML in, frozen dataclasses out, validated once at start.

Relative paths resolve against the folder of the file that names them. Errors name the file, the
key and the reason, and stop start-up (a policy *reload* error keeps the old policy instead: see
`gateway.authz.load_policy`). Every key is documented in conf/gateway.toml.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from server.config_toml import ConfigError, _Section, parse_listen
from server.config_toml import parse_duration as _parse_duration

__all__ = ["DEFAULT_CONFIG", "ConfigError", "GatewayConfig", "load_config", "parse_listen"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "gateway.toml"


@dataclass(frozen=True)
class GatewayConfig:
    source: Path                      # the conf file; also the default policy file
    listen_host: str = "127.0.0.1"
    listen_port: int = 8443
    upstream_host: str = "127.0.0.1"
    upstream_port: int = 8080
    workers: int = 1
    cert: Path = Path("data/tls/server.pem")
    key: Path = Path("data/tls/server.key")
    client_ca: Path = Path("data/ca/root.pem")
    policy_file: Path = Path("gateway.toml")
    handshake_timeout: float = 10.0
    connect_timeout: float = 5.0
    response_timeout: float = 60.0
    idle_timeout: float = 75.0
    client_header_timeout: float = 60.0  # from a request's first byte to the end of its head
    client_body_timeout: float = 60.0    # longest silence inside a request body
    upstream_idle_timeout: float = 30.0
    upstream_pool_size: int = 128
    max_header_bytes: int = 65536
    strip_headers: tuple[str, ...] = ()
    access_log: str = "-"             # "-" stdout, "" off, else a file path
    metrics_listen: tuple[str, int] | None = ("127.0.0.1", 9464)
    feed_url: str = "https://127.0.0.1:14000/feed/revocations"
    token_file: Path = Path("data/feed.token")
    feed_ca: Path = Path("data/ca/root.pem")
    max_staleness: float = 30.0

    def with_overrides(self, *, listen: str | None = None, upstream: str | None = None
                       ) -> GatewayConfig:
        cfg = self
        if listen is not None:
            host, port = parse_listen(listen, "--listen", "command line")
            cfg = replace(cfg, listen_host=host, listen_port=port)
        if upstream is not None:
            host, port = _parse_upstream(upstream, "--upstream", "command line")
            cfg = replace(cfg, upstream_host=host, upstream_port=port)
        return cfg


def parse_duration(value: Any, key: str, source: str) -> float:
    """'90s', '5m', '250ms' or a number of seconds -> seconds (float)."""
    return _parse_duration(value, key, source).total_seconds()


def _parse_upstream(value: str, key: str, source: str) -> tuple[str, int]:
    # Plain HTTP only: the upstream sits on loopback or a private link behind the gateway.
    parts = urlsplit(value)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(source, key, f"expected http://HOST:PORT, got {value!r}")
    try:
        port = parts.port or 80
    except ValueError as e:
        raise ConfigError(source, key, f"bad port in {value!r}") from e
    return parts.hostname, port


class _Table(_Section):
    """A TOML table of the gateway's conf: the shared typed access, with durations in
    seconds and paths resolved against the conf file's folder."""

    def __init__(self, data: Any, path: str, source: str, base: Path) -> None:
        super().__init__(data, path, source)
        self.base = base

    def duration(self, name: str, default: float) -> float:  # type: ignore[override]
        return super().duration(name, timedelta(seconds=default)).total_seconds()

    def path_(self, name: str, default: str) -> Path:
        return (self.base / str(self.get(name, str, default))).resolve()

    def positive(self, name: str, default: int) -> int:
        value: int = self.get(name, int, default)
        if value < 1:
            raise ConfigError(self.source, self.key(name), f"must be >= 1, got {value}")
        return value


def load_config(path: Path | None = None) -> GatewayConfig:
    """Read and validate the gateway conf (the route policy is gateway.authz.load_policy's)."""
    path = (path or DEFAULT_CONFIG).resolve()
    source = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(source, "", "file not found") from e
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(source, "", str(e)) from e
    base = path.parent
    root = _Table(raw, "", source, base)
    gw = _Table(root.get("gateway", dict, {}), "gateway", source, base)
    listen = parse_listen(gw.get("listen", str, "127.0.0.1:8443"), gw.key("listen"), source)
    up = _parse_upstream(gw.get("upstream", str, "http://127.0.0.1:8080"),
                         gw.key("upstream"), source)
    strip = gw.get("strip_headers", list, [])
    if not all(isinstance(h, str) and h for h in strip):
        raise ConfigError(source, gw.key("strip_headers"), "expected a list of header names")
    d = GatewayConfig(source=path)
    cfg = replace(
        d,
        listen_host=listen[0], listen_port=listen[1],
        upstream_host=up[0], upstream_port=up[1],
        workers=gw.positive("workers", d.workers),
        cert=gw.path_("cert", "../data/tls/server.pem"),
        key=gw.path_("key", "../data/tls/server.key"),
        client_ca=gw.path_("client_ca", "../data/ca/root.pem"),
        policy_file=gw.path_("policy_file", path.name),
        handshake_timeout=gw.duration("handshake_timeout", d.handshake_timeout),
        connect_timeout=gw.duration("connect_timeout", d.connect_timeout),
        response_timeout=gw.duration("response_timeout", d.response_timeout),
        idle_timeout=gw.duration("idle_timeout", d.idle_timeout),
        client_header_timeout=gw.duration("client_header_timeout", d.client_header_timeout),
        client_body_timeout=gw.duration("client_body_timeout", d.client_body_timeout),
        upstream_idle_timeout=gw.duration("upstream_idle_timeout", d.upstream_idle_timeout),
        upstream_pool_size=gw.positive("upstream_pool_size", d.upstream_pool_size),
        max_header_bytes=gw.positive("max_header_bytes", d.max_header_bytes),
        strip_headers=tuple(h.lower() for h in strip),
        access_log=_access_log(gw.get("access_log", str, "-"), base),
    )
    gw.done()
    met = _Table(root.get("metrics", dict, {}), "metrics", source, base)
    mlisten = met.get("listen", str, "127.0.0.1:9464")
    met.done()
    rev = _Table(root.get("revocation", dict, {}), "revocation", source, base)
    cfg = replace(
        cfg,
        metrics_listen=parse_listen(mlisten, met.key("listen"), source) if mlisten else None,
        feed_url=rev.get("feed_url", str, d.feed_url),
        token_file=rev.path_("token_file", "../data/feed.token"),
        feed_ca=rev.path_("ca_file", "../data/ca/root.pem"),
        max_staleness=rev.duration("max_staleness", d.max_staleness),
    )
    rev.done()
    # Route rules and node labels belong to the policy (gateway.authz reads and reloads them).
    root.used.update(("routes", "node_labels"))
    root.done()
    return cfg


def _access_log(value: str, base: Path) -> str:
    return value if value in ("", "-") else str((base / value).resolve())
