"""Pure parts, table-driven: route policy, path/host normalisation, header hygiene, XFCC."""
from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.authz import EXPIRED, NO_ROUTE, REVOKED, STALE, Authorizer, PolicyError, compile_policy
from gateway.http1 import (
    DROP_PREFIXES,
    REQUEST_DROP,
    normalize_host,
    normalize_target,
    scan_headers,
)
from gateway.identity import Identity, xfcc_value

POLICY = {"routes": [
    {"name": "metrics", "hosts": ["*.internal"], "glob": "/v1/*/metrics", "methods": ["GET"],
     "allow_dns": ["*.nodes.example.internal"]},
    {"name": "admin", "prefix": "/admin", "allow_labels": ["ops"]},
    {"name": "api", "hosts": ["api.example"], "prefix": "/api/",
     "allow_spiffe": ["spiffe://td/node/*", "spiffe://td/svc/**"]},
], "node_labels": {"n-ops": ["ops"]}}


def ident(node: str = "n1", spiffe: str = "spiffe://td/node/n1",
          dns: tuple[str, ...] = ("n1.nodes.example.internal",)) -> Identity:
    return Identity(serial=7, not_before=100.0, not_after=200.0, spiffe_id=spiffe,
                    dns_names=dns, subject="", sha256="ab", node_id=node)


class State:
    def __init__(self, revoked: set[int] = frozenset(), fresh: bool = True) -> None:  # type: ignore[assignment]
        self.revoked, self.fresh = revoked, fresh

    def is_revoked(self, serial: int) -> bool:
        return serial in self.revoked

    def is_fresh(self, now: float) -> bool:
        return self.fresh


@pytest.mark.parametrize("who,method,host,path,expect", [
    (ident(), "GET", "a.internal", "/v1/x/metrics", ("allowed", "metrics")),
    (ident(), "GET", "a.internal", "/v1/x/y/metrics", ("no_route", "default")),  # * = 1 segment
    (ident(), "POST", "a.internal", "/v1/x/metrics", ("no_route", "default")),
    (ident(), "GET", "a.b.internal", "/v1/x/metrics", ("no_route", "default")),  # * = 1 label
    (ident(dns=("n1.other",)), "GET", "a.internal", "/v1/x/metrics", ("policy", "metrics")),
    (ident(), "GET", "any", "/admin", ("policy", "admin")),
    (ident(node="n-ops"), "DELETE", "any", "/admin/x", ("allowed", "admin")),
    (ident(node="n-ops"), "GET", "any", "/administrator", ("no_route", "default")),
    (ident(), "GET", "api.example", "/api/v2", ("allowed", "api")),
    (ident(spiffe="spiffe://td/svc/a/b"), "GET", "api.example", "/api/x", ("allowed", "api")),
    (ident(spiffe="spiffe://td/node/a/b"), "GET", "api.example", "/api/x", ("policy", "api")),
    (ident(spiffe=""), "GET", "api.example", "/api/x", ("policy", "api")),
])
def test_route_policy(who: Identity, method: str, host: str, path: str,
                      expect: tuple[str, str]) -> None:
    authz = Authorizer(compile_policy(POLICY, "t"))
    d = authz.check(who, 150.0, 0.0, State(), method, host, path)
    assert (d.reason, d.rule) == expect
    # Asked again (memo and route cache warm): the same answer.
    assert authz.check(who, 150.0, 0.0, State(), method, host, path) is d


def test_check_order_and_label_changes() -> None:
    authz = Authorizer(compile_policy(POLICY, "t"))
    who = ident()
    assert authz.check(who, 99.0, 0, State(), "GET", "x", "/admin") is EXPIRED
    assert authz.check(who, 200.5, 0, State(), "GET", "x", "/admin") is EXPIRED
    assert authz.check(who, 200.0, 0, State(), "GET", "x", "/admin").reason == "policy"
    assert authz.check(who, 150, 0, State({7}), "GET", "x", "/admin") is REVOKED
    assert authz.check(who, 150, 0, State(fresh=False), "GET", "x", "/admin") is STALE
    authz.set_node_labels({"n1": ["ops"]})  # the feed's hook: memo must not hide the change
    assert authz.check(who, 150, 0, State(), "GET", "x", "/admin").allowed
    authz.set_node_labels({})
    assert not authz.check(who, 150, 0, State(), "GET", "x", "/admin").allowed
    assert Authorizer(compile_policy({}, "t")).check(who, 150, 0, State(), "GET", "x", "/") \
        is NO_ROUTE


@pytest.mark.parametrize("routes,message", [
    ([{"prefix": "/"}], "name: required"),
    ([{"name": "a"}, {"name": "a"}], "duplicate rule name"),
    ([{"name": "a", "prefix": "/", "glob": "/*"}], "prefix or glob"),
    ([{"name": "a", "prefix": "api"}], "starting with '/'"),
    ([{"name": "a", "alow_dns": ["x"]}], "alow_dns: unknown key"),
    ([{"name": "a", "allow_dns": [""]}], "non-empty strings"),
    ("nope", "array of tables"),
])
def test_bad_policies_are_named(routes: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        compile_policy({"routes": routes}, "policy.toml")


@pytest.mark.parametrize("target,expect", [
    (b"/a/b?x=1", ("/a/b", b"/a/b?x=1", None)),
    (b"/a/./b/../c", ("/a/c", b"/a/c", None)),
    (b"/a//b", ("/a/b", b"/a/b", None)),
    (b"/%61dmin/%7e?q=%2F", ("/admin/~", b"/admin/~?q=%2F", None)),
    (b"/a/%c3%a9", ("/a/%C3%A9", b"/a/%C3%A9", None)),
    (b"/../../etc", ("/etc", b"/etc", None)),
    (b"/a/..", ("/", b"/", None)),
    (b"http://Api.Example:8443/x?y", ("/x", b"/x?y", b"Api.Example")),
    (b"*", ("*", b"*", None)),
    (b"/a%2Fb", None), (b"/a%5cb", None), (b"/a%00", None), (b"/a%zz", None),
    (b"/a\\b", None), (b"a/b", None),
])
def test_normalize_target(target: bytes, expect: object) -> None:
    assert normalize_target(target) == expect


@pytest.mark.parametrize("host,expect", [
    (b"API.example:8443", "api.example"), (b"api.example", "api.example"),
    (b"[::1]:8443", "[::1]"), (b"10.0.0.1:80", "10.0.0.1"),
])
def test_normalize_host(host: bytes, expect: str) -> None:
    assert normalize_host(host) == expect


def test_hop_by_hop_and_identity_fields_are_dropped() -> None:
    head = scan_headers([
        (b"Host", b"a"), (b"Connection", b"keep-alive, X-Hop"), (b"X-Hop", b"1"),
        (b"Keep-Alive", b"timeout=5"), (b"TE", b"trailers"), (b"Trailer", b"X-T"),
        (b"Transfer-Encoding", b"gzip, chunked"), (b"Upgrade", b"WebSocket"),
        (b"Proxy-Connection", b"x"), (b"Proxy-Authorization", b"x"),
        (b"X-Forwarded-Client-Cert", b"Hash=1"), (b"x-nodetrust-node-id", b"evil"),
        (b"Forwarded", b"for=1.2.3.4"), (b"Content-Length", b"5"), (b"X-Keep", b"k"),
    ], REQUEST_DROP, DROP_PREFIXES)
    assert head is not None
    assert head.lines == [b"Host: a\r\n", b"Content-Length: 5\r\n", b"X-Keep: k\r\n"]
    assert head.chunked and head.content_length and head.upgrade == b"websocket"
    assert scan_headers([(b"Host", b"a"), (b"host", b"b")], REQUEST_DROP, DROP_PREFIXES) is None


def test_xfcc_follows_envoy_quoting() -> None:
    who = replace(ident(), subject='CN=a,O=b "c"', spiffe_id="spiffe://td/node/n1",
                  dns_names=("n1.example", "we;ird.example"))
    assert xfcc_value(who) == ('Hash=ab;Subject="CN=a,O=b \\"c\\"";URI=spiffe://td/node/n1;'
                               'DNS=n1.example;DNS="we;ird.example"')
