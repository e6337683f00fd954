"""Server configuration: TOML in, frozen dataclasses out, validated once at start.

This is the only module that reads configuration files. A bad file stops start-up with
the file, the key and the reason (`ConfigError`). Relative paths inside a file resolve
against that file's folder, so `conf/server.toml` works from any working directory.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping

from server.config_toml import ConfigError, _Section, parse_duration, parse_listen

# Re-exported: callers take ConfigError and the parsers from here.
__all__ = ["ConfigError", "parse_duration", "parse_listen", "ServerConfig", "load_config",
           "parse_config"]
from server.identity import DEVICE_ID_SOURCES, IdentitySettings
from server.va.resolve import ValidationSettings

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519")
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "server.toml"
# Names that can never be public: a private CA must not mint names the Web PKI owns.
NEVER_PUBLIC_SUFFIXES = (".internal", ".test", ".home.arpa", ".local")


REJOIN_POLICIES = ("allow", "approve", "deny")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    lifetime: timedelta


@dataclass(frozen=True)
class IdentifierPolicy:
    dns_suffixes: tuple[str, ...] = NEVER_PUBLIC_SUFFIXES
    dns_patterns: tuple[str, ...] = ()
    allow_ip: bool = False
    allow_wildcard: bool = False
    max_identifiers: int = 100


@dataclass(frozen=True)
class RateLimit:
    """`count` events per `period`; count 0 switches the limit off."""

    count: int
    period: timedelta

    @property
    def enabled(self) -> bool:
        return self.count > 0


@dataclass(frozen=True)
class RateLimits:
    new_account_per_ip: RateLimit = RateLimit(300, timedelta(hours=1))
    new_order_per_account: RateLimit = RateLimit(3000, timedelta(hours=1))
    requests_per_ip: RateLimit = RateLimit(0, timedelta(seconds=1))


@dataclass(frozen=True)
class AcmeSettings:
    terms_of_service: str | None = None
    website: str | None = None
    eab: str = "off"  # off | optional | required
    nonce_ttl: timedelta = timedelta(minutes=5)
    max_nonces: int = 200_000
    max_body_bytes: int = 64 * 1024
    order_ttl: timedelta = timedelta(days=1)
    authz_ttl: timedelta = timedelta(days=1)
    authz_reuse: timedelta = timedelta(hours=8)  # 0: never reuse valid authorizations
    max_validity: timedelta = timedelta(days=7)  # newOrder notBefore/notAfter window bound
    backdate: timedelta = timedelta(minutes=1)
    retry_after_seconds: int = 1
    allowed_keys: tuple[str, ...] = KEY_TYPES
    allowed_contact_schemes: tuple[str, ...] = ("mailto",)


@dataclass(frozen=True)
class FeedSettings:
    """The gateways' revocation feed (GET /feed/revocations)."""

    max_wait: timedelta = timedelta(seconds=25)  # longest long-poll hold
    poll_interval: timedelta = timedelta(milliseconds=200)  # sees other processes' revocations
    page_size: int = 1000  # events per answer


@dataclass(frozen=True)
class AttestationSettings:
    """device-attest-01: which manufacturers' bootstrap certificates buy an identity."""

    enabled: bool = True
    roots_dir: Path | None = None  # every PEM in it: one manufacturer, named by file stem
    demo_manufacturer: bool = False  # trust <data-dir>/demo-manufacturer (`nodetrust demo device`)
    crls: tuple[Path, ...] = ()  # manufacturer CRLs (PEM or DER)
    formats: tuple[str, ...] = ("packed", "step")
    device_id_source: str = "auto"  # auto | serialNumber | permanentIdentifier
    device_id_sources: Mapping[str, str] = field(default_factory=dict)  # per manufacturer
    rejoin: str = "allow"  # allow | approve | deny: an enrolled device enrolls again
    # HOST:PORT of the bootstrap mTLS listener where a device (e.g. a lego node) trades its
    # bootstrap certificate for EAB credentials; None: off.
    bootstrap_listen: tuple[str, int] | None = None


@dataclass(frozen=True)
class AdminSettings:
    """The operators' HTTPS listener: admin API, /metrics and the dashboard."""

    listen: tuple[str, int] | None = None  # None: off
    expiry_warning: timedelta = timedelta(hours=6)  # the expiry watch's window
    session_ttl: timedelta = timedelta(hours=12)  # dashboard login cookie lifetime
    # GET /admin/login?token=... sets the cookie and redirects (headless browsers, links):
    # the token then sits in a URL (history, argv). Off unless asked for.
    token_in_url: bool = False


@dataclass(frozen=True)
class AuditSettings:
    """The audit log lives in the database; this optional copy (JSON lines, 0600) is for a
    log shipper, and the outside reference `nodetrust audit verify` checks the chain against."""

    mirror_file: Path | None = None


@dataclass(frozen=True)
class ServerConfig:
    source: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 14000
    data_dir: Path = Path("data")
    base_url: str | None = None  # default: https://<listen>
    tls_names: tuple[str, ...] = ("localhost", "127.0.0.1")
    ca_key_type: str = "ec-p256"
    ca_common_name: str = "nodetrust"
    store_synchronous: str = "full"  # full: every commit reaches the disk before we answer
    acme: AcmeSettings = AcmeSettings()
    identifiers: IdentifierPolicy = IdentifierPolicy()
    profiles: Mapping[str, Profile] = field(default_factory=lambda: {
        "default": Profile("default", "Operational certificate, 24 hours", timedelta(hours=24)),
    })
    default_profile: str = "default"
    validation: ValidationSettings = ValidationSettings()
    rate_limits: RateLimits = RateLimits()
    feed: FeedSettings = FeedSettings()
    attestation: AttestationSettings = AttestationSettings()
    identity: IdentitySettings = IdentitySettings()
    audit: AuditSettings = AuditSettings()
    admin: AdminSettings = AdminSettings()

    @property
    def url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"https://{host}:{self.listen_port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "nodetrust.db"

    @property
    def ca_dir(self) -> Path:
        return self.data_dir / "ca"

    @property
    def feed_token_path(self) -> Path:
        return self.data_dir / "feed.token"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin.token"

    def with_overrides(self, *, data_dir: Path | None = None, listen: str | None = None) -> ServerConfig:
        cfg = self
        if data_dir is not None:
            cfg = replace(cfg, data_dir=data_dir.resolve())
        if listen is not None:
            host, port = parse_listen(listen, "--listen")
            cfg = replace(cfg, listen_host=host, listen_port=port)
        return cfg


def _rate(sec: _Section, name: str, default: RateLimit) -> RateLimit:
    """'300/1h' style rate limits; 0 switches the limit off."""
    raw = sec.get(name, (str, int), None)
    if raw is None:
        return default
    if raw == 0:
        return RateLimit(0, default.period)
    m = re.match(r"^\s*(\d+)\s*/\s*(\S+)\s*$", str(raw))
    if not m:
        raise ConfigError(sec.source, sec.key(name), f"expected COUNT/PERIOD such as '300/1h', got {raw!r}")
    return RateLimit(int(m.group(1)), parse_duration(m.group(2), sec.key(name), sec.source))


def load_config(path: Path | None = None) -> ServerConfig:
    path = (path or DEFAULT_CONFIG).resolve()
    source = str(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(source, "-", "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "-", f"not valid TOML: {exc}") from None
    return parse_config(raw, source, path.parent)


def parse_config(raw: Mapping[str, Any], source: str, base_dir: Path) -> ServerConfig:
    root = _Section(raw, "", source)
    d = ServerConfig(source=source)

    srv = root.table("server")
    host, port = parse_listen(srv.get("listen", str, f"{d.listen_host}:{d.listen_port}"),
                              srv.key("listen"), source)
    data_dir = (base_dir / srv.get("data_dir", str, str(d.data_dir))).resolve()
    base_url = srv.get("base_url", str, "") or None
    tls_names = tuple(srv.str_list("tls_names", list(d.tls_names)))
    srv.done()

    ca = root.table("ca")
    ca_key_type = ca.get("key_type", str, d.ca_key_type)
    if ca_key_type not in KEY_TYPES:
        raise ConfigError(source, ca.key("key_type"), f"must be one of {', '.join(KEY_TYPES)}")
    ca_cn = ca.get("common_name", str, d.ca_common_name)
    ca.done()

    st = root.table("store")
    sync = st.get("synchronous", str, d.store_synchronous).lower()
    if sync not in ("full", "normal"):
        raise ConfigError(source, st.key("synchronous"), "must be 'full' or 'normal'")
    st.done()

    acme_sec = root.table("acme")
    default_profile = acme_sec.get("default_profile", str, d.default_profile)
    acme = _parse_acme(acme_sec, d.acme)
    idents = _parse_identifiers(root.table("identifiers"), d.identifiers)
    profiles, default_profile = _parse_profiles(root.table("profiles"), d, source, default_profile)
    validation = _parse_validation(root.table("validation"), d.validation)

    rl = root.table("rate_limits")
    rate_limits = RateLimits(
        new_account_per_ip=_rate(rl, "new_account_per_ip", d.rate_limits.new_account_per_ip),
        new_order_per_account=_rate(rl, "new_order_per_account", d.rate_limits.new_order_per_account),
        requests_per_ip=_rate(rl, "requests_per_ip", d.rate_limits.requests_per_ip),
    )
    rl.done()
    feed = _parse_feed(root.table("feed"), d.feed)
    attestation = _parse_attestation(root.table("attestation"), d.attestation, base_dir)
    identity = _parse_identity(root.table("identity"), d.identity)
    audit_sec = root.table("audit")
    mirror = audit_sec.get("mirror_file", str, "")
    audit = AuditSettings(mirror_file=(base_dir / mirror).resolve() if mirror else None)
    audit_sec.done()
    admin = _parse_admin(root.table("admin"), d.admin)
    root.done()
    return ServerConfig(
        source=source, listen_host=host, listen_port=port, data_dir=data_dir, base_url=base_url,
        tls_names=tls_names, ca_key_type=ca_key_type, ca_common_name=ca_cn, store_synchronous=sync,
        acme=acme, identifiers=idents, profiles=profiles, default_profile=default_profile,
        validation=validation, rate_limits=rate_limits, feed=feed,
        attestation=attestation, identity=identity, audit=audit, admin=admin,
    )


def _parse_acme(sec: _Section, d: AcmeSettings) -> AcmeSettings:
    eab = sec.get("external_account_binding", str, d.eab)
    if eab not in ("off", "optional", "required"):
        raise ConfigError(sec.source, sec.key("external_account_binding"),
                          "must be 'off', 'optional' or 'required'")
    keys = tuple(sec.str_list("allowed_keys", list(d.allowed_keys)))
    if not keys:  # an empty list would refuse every CSR
        raise ConfigError(sec.source, sec.key("allowed_keys"), "name at least one key type")
    for k in keys:
        if k not in KEY_TYPES:
            raise ConfigError(sec.source, sec.key("allowed_keys"), f"{k!r} is not one of {', '.join(KEY_TYPES)}")
    out = AcmeSettings(
        terms_of_service=sec.get("terms_of_service", str, "") or None,
        website=sec.get("website", str, "") or None,
        eab=eab,
        nonce_ttl=sec.duration("nonce_ttl", d.nonce_ttl),
        max_nonces=sec.get("max_nonces", int, d.max_nonces),
        max_body_bytes=sec.get("max_body_bytes", int, d.max_body_bytes),
        order_ttl=sec.duration("order_ttl", d.order_ttl),
        authz_ttl=sec.duration("authz_ttl", d.authz_ttl),
        authz_reuse=sec.duration("authz_reuse", d.authz_reuse),
        max_validity=sec.duration("max_validity", d.max_validity),
        backdate=sec.duration("backdate", d.backdate),
        retry_after_seconds=sec.get("retry_after_seconds", int, d.retry_after_seconds),
        allowed_keys=keys,
        allowed_contact_schemes=tuple(sec.str_list("allowed_contact_schemes",
                                                   list(d.allowed_contact_schemes))),
    )
    sec.done()
    return out


def _parse_identifiers(sec: _Section, d: IdentifierPolicy) -> IdentifierPolicy:
    suffixes = []
    for s in sec.get("dns_suffixes", list, list(d.dns_suffixes)):
        if not isinstance(s, str) or not s.strip("."):
            raise ConfigError(sec.source, sec.key("dns_suffixes"), f"bad suffix {s!r}")
        suffixes.append("." + s.lower().strip("."))
    out = IdentifierPolicy(
        dns_suffixes=tuple(suffixes),
        dns_patterns=tuple(p.lower() for p in sec.str_list("dns_patterns", list(d.dns_patterns))),
        allow_ip=sec.get("allow_ip", bool, d.allow_ip),
        allow_wildcard=sec.get("allow_wildcard", bool, d.allow_wildcard),
        max_identifiers=sec.get("max_identifiers", int, d.max_identifiers),
    )
    sec.done()
    return out


def _parse_profiles(sec: _Section, d: ServerConfig, source: str,
                    default_name: str) -> tuple[dict[str, Profile], str]:
    profiles: dict[str, Profile] = {}
    for name, body in sec.data.items():
        p = _Section(body, sec.key(name), source)
        lifetime = p.duration("lifetime", timedelta(hours=24))
        if lifetime <= timedelta(0):
            raise ConfigError(source, p.key("lifetime"), "must be positive")
        profiles[name] = Profile(name, p.get("description", str, name), lifetime)
        p.done()
        sec.used.add(name)
    if not profiles:
        profiles = dict(d.profiles)
    if default_name not in profiles:
        raise ConfigError(source, "acme.default_profile", f"no profile named {default_name!r}")
    sec.done()
    return profiles, default_name


def _parse_validation(sec: _Section, d: ValidationSettings) -> ValidationSettings:
    hosts = sec.get("hosts", dict, dict(d.hosts))
    for name, addr in hosts.items():
        if not isinstance(addr, str):
            raise ConfigError(sec.source, sec.key(f"hosts.{name}"), "expected an address string")
    out = ValidationSettings(
        http_port=sec.get("http_port", int, d.http_port),
        tls_port=sec.get("tls_port", int, d.tls_port),
        timeout=sec.duration("timeout", timedelta(seconds=d.timeout)).total_seconds(),
        hosts={k.lower(): v for k, v in hosts.items()},
        dns_server=sec.get("dns_server", str, "") or None,
        respond_wait=sec.duration("respond_wait", timedelta(seconds=d.respond_wait)).total_seconds(),
    )
    sec.done()
    return out


def _parse_feed(sec: _Section, d: FeedSettings) -> FeedSettings:
    out = FeedSettings(max_wait=sec.duration("max_wait", d.max_wait),
                       poll_interval=sec.duration("poll_interval", d.poll_interval),
                       page_size=sec.get("page_size", int, d.page_size))
    if out.poll_interval <= timedelta(0):
        raise ConfigError(sec.source, sec.key("poll_interval"), "must be positive")
    if out.page_size < 1:
        raise ConfigError(sec.source, sec.key("page_size"), "must be at least 1")
    sec.done()
    return out


def _parse_admin(sec: _Section, d: AdminSettings) -> AdminSettings:
    listen = sec.get("listen", str, "")
    out = AdminSettings(
        listen=parse_listen(listen, sec.key("listen"), sec.source) if listen else None,
        expiry_warning=sec.duration("expiry_warning", d.expiry_warning),
        session_ttl=sec.duration("session_ttl", d.session_ttl),
        token_in_url=sec.get("token_in_url", bool, d.token_in_url),
    )
    if out.session_ttl <= timedelta(0):
        raise ConfigError(sec.source, sec.key("session_ttl"), "must be positive")
    sec.done()
    return out


def _parse_attestation(sec: _Section, d: AttestationSettings, base_dir: Path) -> AttestationSettings:
    def path(value: str) -> Path | None:
        return (base_dir / value).resolve() if value else None

    def source(value: str, key: str) -> str:
        if value not in DEVICE_ID_SOURCES:
            raise ConfigError(sec.source, sec.key(key), f"must be one of {', '.join(DEVICE_ID_SOURCES)}")
        return value

    from server.va.attest.formats import FORMATS  # the registry is the list of what exists
    formats = tuple(sec.get("formats", list, list(d.formats)))
    for f in formats:
        if f not in FORMATS:
            raise ConfigError(sec.source, sec.key("formats"), f"unknown format {f!r} "
                              f"(known: {', '.join(sorted(FORMATS))})")
    rejoin = sec.get("rejoin", str, d.rejoin)
    if rejoin not in REJOIN_POLICIES:
        raise ConfigError(sec.source, sec.key("rejoin"), f"must be one of {', '.join(REJOIN_POLICIES)}")
    sources = sec.get("device_id_sources", dict, dict(d.device_id_sources))
    out = AttestationSettings(
        enabled=sec.get("enabled", bool, d.enabled),
        roots_dir=path(sec.get("roots_dir", str, "")),
        demo_manufacturer=sec.get("demo_manufacturer", bool, d.demo_manufacturer),
        crls=tuple(p for p in (path(str(c)) for c in sec.get("crls", list, [])) if p),
        formats=formats,
        device_id_source=source(sec.get("device_id_source", str, d.device_id_source),
                                "device_id_source"),
        device_id_sources={k: source(str(v), f"device_id_sources.{k}") for k, v in sources.items()},
        rejoin=rejoin,
        bootstrap_listen=parse_listen(listen, sec.key("bootstrap_listen"), sec.source)
        if (listen := sec.get("bootstrap_listen", str, "")) else None,
    )
    sec.done()
    return out


def _parse_identity(sec: _Section, d: IdentitySettings) -> IdentitySettings:
    out = IdentitySettings(
        trust_domain=sec.get("trust_domain", str, d.trust_domain).lower(),
        dns_template=sec.get("dns_template", str, d.dns_template),
        spiffe_template=sec.get("spiffe_template", str, d.spiffe_template),
        lifetime=sec.duration("lifetime", d.lifetime),
        include_permanent_identifier=sec.get("include_permanent_identifier", bool,
                                             d.include_permanent_identifier),
    )
    for key, template in (("dns_template", out.dns_template), ("spiffe_template", out.spiffe_template)):
        try:
            rendered = template.format(node_id="n", device_id="n", trust_domain=out.trust_domain)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(sec.source, sec.key(key), f"bad template ({exc}); placeholders: "
                              "{node_id}, {trust_domain}") from None
        if key == "spiffe_template" and not rendered.startswith(f"spiffe://{out.trust_domain}/"):
            raise ConfigError(sec.source, sec.key(key), "must start with spiffe://{trust_domain}/")
        if key == "dns_template" and not rendered.startswith("n."):
            raise ConfigError(sec.source, sec.key(key), "must start with {node_id}. (the node's "
                              "own label)")
    if out.lifetime <= timedelta(0):
        raise ConfigError(sec.source, sec.key("lifetime"), "must be positive")
    sec.done()
    return out
