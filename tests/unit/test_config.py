"""server.config: the shipped file, defaults, path resolution, and errors that name the
file and the key."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from server.config import (DEFAULT_CONFIG, AcmeSettings, ConfigError, IdentifierPolicy, RateLimit,
                           RateLimits, ServerConfig, load_config, parse_config, parse_duration,
                           parse_listen)
from server.va.resolve import ValidationSettings

SRC = "/etc/nodetrust/server.toml"


def parse(raw: dict[str, Any], base: Path = Path("/srv")) -> ServerConfig:
    return parse_config(raw, SRC, base)


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as exc:
        parse(raw)
    return str(exc.value)


# -- the shipped file ------------------------------------------------------------------------

def test_shipped_config_loads_with_the_documented_defaults() -> None:
    cfg = load_config()
    assert cfg.source == str(DEFAULT_CONFIG)
    # "Every key is shown with its default": the file and the dataclasses agree
    assert cfg.acme == AcmeSettings()
    assert cfg.identifiers == IdentifierPolicy()
    assert cfg.rate_limits == RateLimits()
    assert cfg.validation == ValidationSettings()
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 14000)
    assert cfg.data_dir == DEFAULT_CONFIG.parent.parent / "data"
    assert cfg.url == "https://127.0.0.1:14000"
    assert cfg.ca_key_type == "ec-p256" and cfg.store_synchronous == "full"
    assert cfg.default_profile == "default"
    assert {n: p.lifetime for n, p in cfg.profiles.items()} == {
        "default": timedelta(hours=24), "shortlived": timedelta(hours=6)}


def test_empty_config_gives_defaults() -> None:
    cfg = parse({})
    d = ServerConfig(source=SRC)
    assert cfg.acme == d.acme and cfg.identifiers == d.identifiers
    assert cfg.rate_limits == d.rate_limits and cfg.validation == d.validation
    assert dict(cfg.profiles) == dict(d.profiles)
    assert cfg.data_dir == Path("/srv/data")


# -- paths -----------------------------------------------------------------------------------

def test_relative_data_dir_resolves_against_the_files_folder(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "etc" / "server.toml"
    conf.parent.mkdir()
    conf.write_text('[server]\ndata_dir = "../state"\n')
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(conf)
    assert cfg.data_dir == tmp_path / "state"
    assert cfg.db_path == tmp_path / "state" / "nodetrust.db"
    assert cfg.ca_dir == tmp_path / "state" / "ca"


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    assert parse({"server": {"data_dir": str(tmp_path / "abs")}}).data_dir == tmp_path / "abs"


def test_with_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = parse({}).with_overrides(data_dir=Path("rel"), listen="[::1]:8443")
    assert cfg.data_dir == tmp_path / "rel"
    assert (cfg.listen_host, cfg.listen_port) == ("::1", 8443)
    assert cfg.url == "https://[::1]:8443"


# -- values ----------------------------------------------------------------------------------

def test_values_are_parsed() -> None:
    cfg = parse({
        "server": {"listen": "0.0.0.0:443", "base_url": "https://acme.corp.internal/",
                   "tls_names": ["acme.corp.internal"]},
        "acme": {"nonce_ttl": "90s", "authz_reuse": "0s", "backdate": 30,
                 "allowed_keys": ["ec-p256"], "default_profile": "short"},
        "identifiers": {"dns_suffixes": ["Corp.Internal.", ".lab"], "dns_patterns": ["*.X.com"],
                        "allow_ip": True},
        "profiles": {"short": {"lifetime": "1.5h"}},
        "rate_limits": {"new_order_per_account": "10/1m", "new_account_per_ip": 0},
        "validation": {"hosts": {"Node.Test": "10.0.0.1"}, "timeout": "500ms"},
    })
    assert cfg.url == "https://acme.corp.internal"
    assert cfg.acme.nonce_ttl == timedelta(seconds=90)
    assert cfg.acme.authz_reuse == timedelta(0)
    assert cfg.acme.backdate == timedelta(seconds=30)
    assert cfg.acme.allowed_keys == ("ec-p256",)
    assert cfg.identifiers.dns_suffixes == (".corp.internal", ".lab")
    assert cfg.identifiers.dns_patterns == ("*.x.com",)
    assert cfg.identifiers.allow_ip is True
    assert cfg.default_profile == "short"
    assert cfg.profiles["short"].lifetime == timedelta(minutes=90)
    assert cfg.profiles["short"].description == "short"
    assert cfg.rate_limits.new_order_per_account == RateLimit(10, timedelta(minutes=1))
    assert not cfg.rate_limits.new_account_per_ip.enabled
    assert cfg.validation.hosts == {"node.test": "10.0.0.1"}
    assert cfg.validation.timeout == 0.5


@pytest.mark.parametrize("value,want", [
    ("90s", timedelta(seconds=90)), ("5m", timedelta(minutes=5)), ("24h", timedelta(hours=24)),
    ("7d", timedelta(days=7)), ("250ms", timedelta(milliseconds=250)), (" 2 h ", timedelta(hours=2)),
    (30, timedelta(seconds=30)), (1.5, timedelta(seconds=1.5)), ("0s", timedelta(0)),
])
def test_parse_duration(value: Any, want: timedelta) -> None:
    assert parse_duration(value, "k") == want


@pytest.mark.parametrize("value", ["5", "5 minutes", "1w", "", "-5m", -5, True, None, [1]])
def test_parse_duration_refuses(value: Any) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_duration(value, "acme.nonce_ttl", SRC)
    assert str(exc.value).startswith(f"{SRC}: acme.nonce_ttl: expected a duration")


@pytest.mark.parametrize("value,want", [
    ("127.0.0.1:14000", ("127.0.0.1", 14000)), ("[::1]:443", ("::1", 443)),
    (":8080", ("127.0.0.1", 8080)), ("acme.internal:65535", ("acme.internal", 65535)),
])
def test_parse_listen(value: str, want: tuple[str, int]) -> None:
    assert parse_listen(value, "server.listen") == want


# -- errors name the file and the key ----------------------------------------------------------

@pytest.mark.parametrize("raw,key,reason", [
    # unknown keys, at every level
    ({"bogus": 1}, "bogus", "unknown key"),
    ({"server": {"listen_addr": "x"}}, "server.listen_addr", "unknown key"),
    ({"acme": {"nonce_tll": "5m"}}, "acme.nonce_tll", "unknown key"),
    ({"identifiers": {"allow_ips": True}}, "identifiers.allow_ips", "unknown key"),
    ({"profiles": {"x": {"lifetim": "1h"}}}, "profiles.x.lifetim", "unknown key"),
    ({"rate_limits": {"orders": "1/1h"}}, "rate_limits.orders", "unknown key"),
    ({"validation": {"port": 80}}, "validation.port", "unknown key"),
    # wrong types
    ({"server": "x"}, "server", "expected a table"),
    ({"acme": {"max_nonces": "5"}}, "acme.max_nonces", "expected an integer"),
    ({"acme": {"max_nonces": True}}, "acme.max_nonces", "expected an integer"),
    ({"identifiers": {"allow_ip": "yes"}}, "identifiers.allow_ip", "expected true/false"),
    ({"identifiers": {"dns_suffixes": ".test"}}, "identifiers.dns_suffixes", "expected a list"),
    ({"identifiers": {"dns_suffixes": [1]}}, "identifiers.dns_suffixes", "bad suffix"),
    ({"identifiers": {"dns_patterns": [1]}}, "identifiers.dns_patterns", "1"),
    ({"server": {"tls_names": ["ok", 5]}}, "server.tls_names", "5"),
    ({"acme": {"allowed_contact_schemes": [None]}}, "acme.allowed_contact_schemes", "None"),
    ({"profiles": {"x": "24h"}}, "profiles.x", "expected a table"),
    ({"validation": {"hosts": {"a.test": 1}}}, "validation.hosts.a.test", "address string"),
    # bad durations and rates
    ({"acme": {"nonce_ttl": "5 minutes"}}, "acme.nonce_ttl", "expected a duration"),
    ({"acme": {"order_ttl": "-1h"}}, "acme.order_ttl", "expected a duration"),
    ({"acme": {"authz_ttl": -60}}, "acme.authz_ttl", "expected a duration"),
    ({"profiles": {"x": {"lifetime": "0s"}}}, "profiles.x.lifetime", "must be positive"),
    ({"rate_limits": {"new_order_per_account": "lots"}}, "rate_limits.new_order_per_account",
     "COUNT/PERIOD"),
    ({"rate_limits": {"new_order_per_account": "5/fortnight"}},
     "rate_limits.new_order_per_account", "expected a duration"),
    # choices
    ({"acme": {"default_profile": "nope"}}, "acme.default_profile", "no profile named 'nope'"),
    ({"acme": {"default_profile": "default"}, "profiles": {"only": {"lifetime": "1h"}}},
     "acme.default_profile", "no profile named 'default'"),
    ({"ca": {"key_type": "dsa"}}, "ca.key_type", "must be one of"),
    ({"acme": {"allowed_keys": ["rsa-1024"]}}, "acme.allowed_keys", "'rsa-1024'"),
    ({"acme": {"allowed_keys": []}}, "acme.allowed_keys", "at least one"),
    ({"acme": {"external_account_binding": "yes"}}, "acme.external_account_binding", "'off'"),
    ({"store": {"synchronous": "off"}}, "store.synchronous", "'full' or 'normal'"),
    # listen
    ({"server": {"listen": "localhost"}}, "server.listen", "expected HOST:PORT"),
    ({"server": {"listen": "localhost:0"}}, "server.listen", "expected HOST:PORT"),
    ({"server": {"listen": "localhost:70000"}}, "server.listen", "expected HOST:PORT"),
    ({"server": {"listen": "localhost:https"}}, "server.listen", "expected HOST:PORT"),
    ({"server": {"listen": 14000}}, "server.listen", "expected a string"),
])
def test_errors_name_file_and_key(raw: dict[str, Any], key: str, reason: str) -> None:
    msg = error_of(raw)
    assert msg.startswith(f"{SRC}: {key}: "), msg
    assert reason in msg, msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "nope.toml")
    assert str(exc.value) == f"{tmp_path / 'nope.toml'}: -: file not found"


def test_invalid_toml(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text("[acme\nnonce_ttl = 5m\n")
    with pytest.raises(ConfigError) as exc:
        load_config(conf)
    assert str(exc.value).startswith(f"{conf}: -: not valid TOML")


def test_error_in_a_file_names_that_file(tmp_path: Path) -> None:
    conf = tmp_path / "server.toml"
    conf.write_text('[acme]\nnonce_ttl = "soon"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(conf)
    assert str(exc.value).startswith(f"{conf}: acme.nonce_ttl: ")
