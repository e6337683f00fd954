"""Typed, checked access to TOML tables: every error names the file and the key.
Shared by the server's and the gateway's configuration loaders."""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Mapping


class ConfigError(Exception):
    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any, key: str, source: str = "config") -> timedelta:
    """'90s', '5m', '24h', '7d', or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        # negative numbers are refused like "-5m" is: a negative TTL or lifetime is a typo
        return timedelta(seconds=value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    raise ConfigError(source, key, f"expected a duration such as '90s', '5m', '24h', got {value!r}")


def parse_listen(value: str, key: str, source: str = "config") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(source, key, f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Section:
    """Typed access to one TOML table that reports unknown keys and wrong types."""

    def __init__(self, data: Mapping[str, Any], path: str, source: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(source, path, "expected a table")
        self.data, self.path, self.source = data, path, source
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            raise ConfigError(self.source, self.key(name), f"expected {_kind_name(kind)}, got {value!r}")
        return value

    def str_list(self, name: str, default: list[str]) -> list[str]:
        """A list whose every element is a string (a stray number would crash later)."""
        values: list[Any] = self.get(name, list, default)
        for v in values:
            if not isinstance(v, str):
                raise ConfigError(self.source, self.key(name), f"expected a list of strings, "
                                                              f"got element {v!r}")
        return values

    def duration(self, name: str, default: timedelta) -> timedelta:
        self.used.add(name)
        if name not in self.data:
            return default
        return parse_duration(self.data[name], self.key(name), self.source)

    def table(self, name: str) -> _Section:
        self.used.add(name)
        return _Section(self.data.get(name, {}), self.key(name), self.source)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(self.source, self.key(unknown[0]), "unknown key (typo?)")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({"str": "a string", "int": "an integer", "bool": "true/false",
                        "list": "a list", "dict": "a table", "float": "a number"}.get(k.__name__, k.__name__)
                       for k in kinds)
