"""Per-request authorization: certificate validity, revocation, freshness, route policy.

Pure: no I/O except `load_policy`, which reads a file and compiles it. The check runs inline in the
proxy protocol on every request, so everything is precompiled: a route lookup is one dict hit on
(host, method, path) once warm, and "may this identity use this rule" is memoized on the identity
(rule uids are unique across reloads; a label change bumps `generation`, which resets memos).

Policy semantics: ordered rules; the first rule whose host, path and method match decides; it
admits an identity whose SPIFFE ID, one of whose DNS names, or one of whose node labels it lists.
No matching rule: deny (`default`). A rule that lists nobody admits nobody (fail closed).
Globs: `*` stays within one DNS label / path segment, `**` crosses them.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.identity import Identity

__all__ = ["Authorizer", "Decision", "Policy", "PolicyError", "compile_policy", "load_policy"]

_uids = itertools.count(1)
_ROUTE_CACHE_MAX = 8192


class PolicyError(Exception):
    pass


class RevocationView(Protocol):
    def is_revoked(self, serial: int) -> bool: ...
    def is_fresh(self, now: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    status: int
    reason: str      # allowed | policy | no_route | revoked | expired | stale
    rule: str        # the rule that decided; "-" when no rule was consulted


EXPIRED = Decision(False, 403, "expired", "-")
REVOKED = Decision(False, 403, "revoked", "-")
STALE = Decision(False, 503, "stale", "-")
NO_ROUTE = Decision(False, 403, "no_route", "default")


def _glob(pattern: str, sep: str) -> re.Pattern[str]:
    """`**` matches anything, `*` anything but `sep`, `?` one non-`sep` character."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append(f"[^{re.escape(sep)}]*")
            i += 1
        elif pattern[i] == "?":
            out.append(f"[^{re.escape(sep)}]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?")


class _Names:
    """Exact names in a set, globs as compiled patterns: exact hits cost one hash lookup."""

    __slots__ = ("exact", "patterns")

    def __init__(self, items: Iterable[str], sep: str, lower: bool) -> None:
        items = [i.lower() if lower else i for i in items]
        self.exact = frozenset(i for i in items if not _is_glob(i))
        self.patterns = tuple(_glob(i, sep) for i in items if _is_glob(i))

    def __bool__(self) -> bool:
        return bool(self.exact or self.patterns)

    def match(self, value: str) -> bool:
        if value in self.exact:
            return True
        for p in self.patterns:  # a loop, not any(genexpr): no generator per call
            if p.fullmatch(value):
                return True
        return False


@dataclass(eq=False, slots=True)
class Rule:
    uid: int
    name: str
    hosts: _Names | None             # None: any host
    prefix: str | None
    path_glob: re.Pattern[str] | None
    methods: frozenset[str] | None   # None: any method
    spiffe: _Names
    dns: _Names
    labels: frozenset[str]
    allow: Decision
    deny: Decision

    def matches(self, host: str, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.hosts is not None and not self.hosts.match(host):
            return False
        if self.path_glob is not None:
            return self.path_glob.fullmatch(path) is not None
        p = self.prefix or "/"
        # Segment-wise prefix: "/api" covers "/api" and "/api/x", not "/apix".
        return p.endswith("/") and path.startswith(p) or path == p or path.startswith(p + "/")

    def admits(self, ident: Identity, labels: frozenset[str]) -> bool:
        if ident.spiffe_id and self.spiffe.match(ident.spiffe_id):
            return True
        if self.dns:
            for d in ident.dns_names:
                if self.dns.match(d):
                    return True
        return not self.labels.isdisjoint(labels)


class Policy:
    """Compiled rules plus the static node labels from the policy file."""

    def __init__(self, rules: tuple[Rule, ...], labels: Mapping[str, frozenset[str]],
                 source: str = "") -> None:
        self.rules = rules
        self.labels = dict(labels)
        self.source = source
        self._cache: dict[tuple[str, str, str], Rule | None] = {}

    def route(self, host: str, method: str, path: str) -> Rule | None:
        key = (host, method, path)
        try:
            return self._cache[key]
        except KeyError:
            pass
        rule = next((r for r in self.rules if r.matches(host, method, path)), None)
        if len(self._cache) >= _ROUTE_CACHE_MAX:
            self._cache.clear()  # bounded: a scan of many distinct paths cannot grow memory
        self._cache[key] = rule
        return rule


class Authorizer:
    """The current policy (swapped whole on reload) and the node-label hook for the feed."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.generation = 0
        self._dynamic_labels: dict[str, frozenset[str]] = {}
        self._labels: dict[str, frozenset[str]] = dict(policy.labels)

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self._merge()

    def set_node_labels(self, labels: Mapping[str, Iterable[str]]) -> None:
        """Hook: node id -> labels known to the server (the feed fills this); replaces the lot."""
        self._dynamic_labels = {k: frozenset(v) for k, v in labels.items()}
        self._merge()

    def _merge(self) -> None:
        merged = dict(self.policy.labels)
        for node, labels in self._dynamic_labels.items():
            merged[node] = merged.get(node, frozenset()) | labels
        self._labels = merged
        self.generation += 1  # invalidates every identity's memo

    def check(self, ident: Identity, now: float, mono: float, revocation: RevocationView,
              method: str, host: str, path: str) -> Decision:
        """The per-request decision. `now`: epoch seconds; `mono`: time.monotonic()."""
        if not ident.not_before <= now <= ident.not_after:  # RFC 5280: both ends inclusive
            return EXPIRED
        if revocation.is_revoked(ident.serial):
            return REVOKED
        if not revocation.is_fresh(mono):
            return STALE
        rule = self.policy.route(host, method, path)
        if rule is None:
            return NO_ROUTE
        memo = ident.memo
        if ident.memo_generation != self.generation:
            memo.clear()
            ident.memo_generation = self.generation
        ok = memo.get(rule.uid)
        if ok is None:
            ok = memo[rule.uid] = rule.admits(ident, self._labels.get(ident.node_id, frozenset()))
        return rule.allow if ok else rule.deny


# --- compiling ---------------------------------------------------------------------------------

_RULE_KEYS = {"name", "hosts", "prefix", "glob", "methods",
              "allow_spiffe", "allow_dns", "allow_labels"}


def _strings(rule: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = rule.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where}.{key}: expected a list of non-empty strings")
    return value


def _compile_rule(raw: Any, index: int, source: str, seen: set[str]) -> Rule:
    where = f"{source}: routes[{index}]"
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: expected a table")
    if unknown := sorted(set(raw) - _RULE_KEYS):
        raise PolicyError(f"{where}.{unknown[0]}: unknown key (typo?)")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{where}.name: required (a non-empty string naming the rule)")
    if name in seen:
        raise PolicyError(f"{where}.name: duplicate rule name {name!r}")
    seen.add(name)
    where = f"{source}: routes[{index}] ({name})"
    prefix, glob = raw.get("prefix"), raw.get("glob")
    if prefix is not None and glob is not None:
        raise PolicyError(f"{where}: give prefix or glob, not both")
    for key, value in (("prefix", prefix), ("glob", glob)):
        if value is not None and (not isinstance(value, str) or not value.startswith("/")):
            raise PolicyError(f"{where}.{key}: expected a path starting with '/'")
    hosts = _strings(raw, "hosts", where)
    methods = _strings(raw, "methods", where)
    return Rule(
        uid=next(_uids), name=name,
        hosts=_Names(hosts, ".", lower=True) if hosts and "*" not in hosts else None,
        prefix=prefix, path_glob=_glob(glob, "/") if glob else None,
        methods=frozenset(m.upper() for m in methods) if methods else None,
        spiffe=_Names(_strings(raw, "allow_spiffe", where), "/", lower=False),
        dns=_Names(_strings(raw, "allow_dns", where), ".", lower=True),
        labels=frozenset(_strings(raw, "allow_labels", where)),
        allow=Decision(True, 0, "allowed", name),
        deny=Decision(False, 403, "policy", name),
    )


def compile_policy(raw: Mapping[str, Any], source: str) -> Policy:
    """TOML data ([[routes]], [node_labels]) -> Policy. Raises PolicyError naming file and key."""
    routes = raw.get("routes", [])
    if not isinstance(routes, list):
        raise PolicyError(f"{source}: routes: expected an array of tables ([[routes]])")
    seen: set[str] = set()
    rules = tuple(_compile_rule(r, i, source, seen) for i, r in enumerate(routes))
    raw_labels = raw.get("node_labels", {})
    if not isinstance(raw_labels, Mapping):
        raise PolicyError(f"{source}: node_labels: expected a table of node id = [labels]")
    labels = {node: frozenset(_strings(raw_labels, node, f"{source}: node_labels"))
              for node in raw_labels}
    return Policy(rules, labels, source)


def load_policy(path: Path, *, policy_only: bool = False) -> Policy:
    """Read and compile a policy file. `policy_only`: the file holds nothing but policy tables."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PolicyError(f"{path}: {e}") from e
    if policy_only and (unknown := sorted(set(raw) - {"routes", "node_labels"})):
        raise PolicyError(f"{path}: {unknown[0]}: unknown key (a policy file holds only "
                          "[[routes]] and [node_labels])")
    return compile_policy(raw, str(path))
