"""server.policy: identifier normalization and policy decisions, table-driven."""
from __future__ import annotations

import pytest

from server.config import IdentifierPolicy
from server.errors import AcmeProblem
from server.models import Identifier
from server.policy import check_identifier, check_identifiers, normalize

DEFAULT = IdentifierPolicy()
WILD = IdentifierPolicy(allow_wildcard=True)
IP = IdentifierPolicy(allow_ip=True)
PATTERNS = IdentifierPolicy(dns_patterns=("*.corp.example.com", "host-?.lab.example.org"))
ONLY_CORP = IdentifierPolicy(dns_suffixes=(".corp.internal",))

OK = None


def _name_of_length(n: int) -> str:
    """A name under .test of exactly n characters, labels of at most 63."""
    body, labels = n - len(".test"), []
    while body > 0:
        size = min(63, body if body <= 63 else body - 2)  # keep room for the next dot + label
        labels.append("a" * size)
        body -= size + 1
    name = ".".join(labels) + ".test"
    assert len(name) == n, (len(name), n)
    return name


# (policy, type, value, expected: None = allowed, else (problem code, fragment of detail))
CASES = [
    (DEFAULT, "dns", "node.test", OK),
    (DEFAULT, "dns", "a.b.c.internal", OK),
    (DEFAULT, "dns", "printer.home.arpa", OK),
    (DEFAULT, "dns", "nas.local", OK),
    (DEFAULT, "dns", "xn--bcher-kva.test", OK),
    (DEFAULT, "dns", "a-b.test", OK),
    (DEFAULT, "dns", "0.test", OK),
    (DEFAULT, "dns", "example.com", ("rejectedIdentifier", "identifiers.dns_suffixes")),
    (DEFAULT, "dns", "test", ("rejectedIdentifier", "dns-syntax")),
    (DEFAULT, "dns", "home.arpa", ("rejectedIdentifier", "identifiers.dns_suffixes")),
    (DEFAULT, "dns", "node.nottest", ("rejectedIdentifier", "identifiers.dns_suffixes")),
    (DEFAULT, "dns", "node.test.com", ("rejectedIdentifier", "identifiers.dns_suffixes")),
    (DEFAULT, "dns", "a..test", ("rejectedIdentifier", "dns-syntax")),
    (DEFAULT, "dns", "-a.test", ("rejectedIdentifier", "dns-syntax")),
    (DEFAULT, "dns", "a-.test", ("rejectedIdentifier", "dns-syntax")),
    (DEFAULT, "dns", "a_b.test", ("rejectedIdentifier", "dns-syntax")),
    (DEFAULT, "dns", "bücher.test", ("rejectedIdentifier", "dns-syntax")),
    (DEFAULT, "dns", "a b.test", ("rejectedIdentifier", "dns-syntax")),
    (DEFAULT, "dns", "x" * 63 + ".test", OK),
    (DEFAULT, "dns", "x" * 64 + ".test", ("rejectedIdentifier", "dns-syntax")),
    (DEFAULT, "dns", _name_of_length(253), OK),
    (DEFAULT, "dns", _name_of_length(254), ("rejectedIdentifier", "dns-syntax")),
    (DEFAULT, "dns", "10.0.0.1", ("rejectedIdentifier", "ip identifier")),
    (DEFAULT, "dns", "*.node.test", ("rejectedIdentifier", "identifiers.allow_wildcard")),
    (WILD, "dns", "*.node.test", OK),
    (WILD, "dns", "*.test", ("rejectedIdentifier", "single-label")),
    (WILD, "dns", "*.*.node.test", ("rejectedIdentifier", "dns-syntax")),
    (WILD, "dns", "a.*.node.test", ("rejectedIdentifier", "dns-syntax")),
    (WILD, "dns", "*node.test", ("rejectedIdentifier", "dns-syntax")),
    (WILD, "dns", "*.example.com", ("rejectedIdentifier", "identifiers.dns_suffixes")),
    (DEFAULT, "ip", "10.0.0.1", ("rejectedIdentifier", "identifiers.allow_ip")),
    (DEFAULT, "ip", "::1", ("rejectedIdentifier", "identifiers.allow_ip")),
    (IP, "ip", "10.0.0.1", OK),
    (IP, "ip", "2001:db8::1", OK),
    (PATTERNS, "dns", "web.corp.example.com", OK),
    (PATTERNS, "dns", "a.b.corp.example.com", OK),
    (PATTERNS, "dns", "host-1.lab.example.org", OK),
    (PATTERNS, "dns", "host-12.lab.example.org", ("rejectedIdentifier", "host-?.lab.example.org")),
    (PATTERNS, "dns", "corp.example.com", ("rejectedIdentifier", "identifiers.dns_suffixes")),
    (PATTERNS, "dns", "web.corp.example.com.evil.net",
     ("rejectedIdentifier", "identifiers.dns_suffixes")),
    (PATTERNS, "dns", "node.test", OK),  # suffixes still apply
    (ONLY_CORP, "dns", "a.corp.internal", OK),
    (ONLY_CORP, "dns", "a.other.internal", ("rejectedIdentifier", ".corp.internal")),
    (DEFAULT, "email", "a@b.test", ("unsupportedIdentifier", "'email'")),
    (DEFAULT, "DNS", "node.test", ("unsupportedIdentifier", "'DNS'")),
]


@pytest.mark.parametrize("pol,typ,value,expected", CASES,
                         ids=[f"{c[1]}:{c[2][:30]}" for c in CASES])
def test_check_identifier(pol: IdentifierPolicy, typ: str, value: str,
                          expected: tuple[str, str] | None) -> None:
    ident = normalize(Identifier(typ, value))
    if expected is None:
        check_identifier(ident, pol)
        return
    with pytest.raises(AcmeProblem) as exc:
        check_identifier(ident, pol)
    code, fragment = expected
    assert exc.value.code == code
    assert fragment in exc.value.detail
    assert exc.value.extra["identifier"] == ident.to_json()


@pytest.mark.parametrize("typ,value,want", [
    ("dns", "Node.TEST", "node.test"),
    ("dns", "node.test.", "node.test"),
    ("ip", "2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
    ("ip", "010.0.0.1", None),
    ("ip", "10.0.0.256", None),
    ("ip", "fe80::1%eth0", None),  # a zone id names an interface of the CA, not the node
    ("ip", "node.test", None),
    ("email", "A@B", "A@B"),
])
def test_normalize(typ: str, value: str, want: str | None) -> None:
    if want is None:
        with pytest.raises(AcmeProblem) as exc:
            normalize(Identifier(typ, value))
        assert exc.value.code == "malformed" and value in exc.value.detail
    else:
        assert normalize(Identifier(typ, value)) == Identifier(typ, want)


def test_check_identifiers_sorts_and_deduplicates() -> None:
    out = check_identifiers([Identifier("dns", "B.test"), Identifier("ip", "10.0.0.1"),
                             Identifier("dns", "a.test"), Identifier("dns", "b.test.")], IP)
    assert out == [Identifier("dns", "a.test"), Identifier("dns", "b.test"),
                   Identifier("ip", "10.0.0.1")]


def test_check_identifiers_empty() -> None:
    with pytest.raises(AcmeProblem) as exc:
        check_identifiers([], DEFAULT)
    assert exc.value.code == "malformed" and "at least one" in exc.value.detail


def test_check_identifiers_limit() -> None:
    pol = IdentifierPolicy(max_identifiers=2)
    check_identifiers([Identifier("dns", "a.test"), Identifier("dns", "b.test")], pol)
    with pytest.raises(AcmeProblem) as exc:
        check_identifiers([Identifier("dns", f"{c}.test") for c in "abc"], pol)
    assert exc.value.code == "rejectedIdentifier"
    assert "identifiers.max_identifiers" in exc.value.detail


def test_single_refusal_is_raised_as_is() -> None:
    with pytest.raises(AcmeProblem) as exc:
        check_identifiers([Identifier("dns", "ok.test"), Identifier("dns", "bad.com")], DEFAULT)
    assert exc.value.code == "rejectedIdentifier"
    assert not exc.value.subproblems
    assert exc.value.extra["identifier"] == {"type": "dns", "value": "bad.com"}


def test_several_refusals_become_subproblems() -> None:
    with pytest.raises(AcmeProblem) as exc:
        check_identifiers([Identifier("dns", "bad.com"), Identifier("ip", "10.0.0.1"),
                           Identifier("uri", "x"), Identifier("dns", "ok.test")], DEFAULT)
    p = exc.value
    assert p.code == "rejectedIdentifier" and p.detail.startswith("3 identifiers refused")
    subs = {s["identifier"]["value"]: s for s in p.subproblems}
    assert set(subs) == {"bad.com", "10.0.0.1", "x"}
    assert subs["x"]["type"].endswith(":unsupportedIdentifier")
    assert "identifiers.allow_ip" in subs["10.0.0.1"]["detail"]
    assert p.to_json()["subproblems"] == p.subproblems
