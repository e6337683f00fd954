"""Identifier policy: pure decisions over `IdentifierPolicy`, no I/O.

Every refusal names the rule that refused, so an operator can see which conf key to
change (`identifiers.dns_suffixes`, `identifiers.allow_ip`, ...).
"""
from __future__ import annotations

import fnmatch
import ipaddress
import re

from nodetrust.challenges import PERMANENT_IDENTIFIER
from server.config import IdentifierPolicy
from server.errors import AcmeProblem
from server.models import Identifier

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _reject(ident: Identifier, rule: str, why: str) -> AcmeProblem:
    return AcmeProblem("rejectedIdentifier", f"{ident.type} identifier {ident.value!r} refused by "
                       f"policy rule {rule}: {why}",
                       extra={"identifier": ident.to_json()})


def normalize(ident: Identifier) -> Identifier:
    if ident.type == "dns":
        return Identifier("dns", ident.value.lower().rstrip("."))
    if ident.type == "ip":
        try:
            # A zone id ("fe80::1%eth0") names an interface of this host, not the node's
            # address, and cannot be put in a certificate: refuse it.
            if "%" in ident.value:
                raise ValueError(ident.value)
            return Identifier("ip", str(ipaddress.ip_address(ident.value)))
        except ValueError:
            raise AcmeProblem("malformed", f"ip identifier {ident.value!r} is not an IP address",
                              extra={"identifier": ident.to_json()}) from None
    return ident


def check_identifier(ident: Identifier, pol: IdentifierPolicy,
                     device_domain: str | None = None) -> None:
    """Raise `AcmeProblem` unless policy lets this CA certify `ident` (already normalized).

    `device_domain` (e.g. ".nodes.nodetrust.internal") is set when device attestation is
    on: permanent-identifier values and names under it are then proven by device-attest-01
    and take their identity from the templates, so dns_suffixes does not apply to them."""
    if ident.type == PERMANENT_IDENTIFIER and device_domain is not None:
        if not 0 < len(ident.value) <= 256 or not ident.value.isprintable():
            raise _reject(ident, "permanent-identifier-syntax",
                          "a device id is 1 to 256 printable characters")
        return
    if ident.type == "ip":
        if not pol.allow_ip:
            raise _reject(ident, "identifiers.allow_ip", "IP identifiers are switched off")
        return
    if ident.type != "dns":
        raise AcmeProblem("unsupportedIdentifier", f"identifier type {ident.type!r} is not supported",
                          extra={"identifier": ident.to_json()})
    name = ident.value
    wildcard = name.startswith("*.")
    base = name[2:] if wildcard else name
    if wildcard and not pol.allow_wildcard:
        raise _reject(ident, "identifiers.allow_wildcard", "wildcard names are switched off")
    if len(base) > 253 or not all(_LABEL.match(label) for label in base.split(".")):
        raise _reject(ident, "dns-syntax", "not a valid DNS name (RFC 1035 labels)")
    if "." not in base:
        raise _reject(ident, "dns-syntax", "a single-label name cannot be certified")
    try:
        ipaddress.ip_address(base)
        raise _reject(ident, "dns-syntax", "an IP address must use an ip identifier")
    except ValueError:
        pass
    if device_domain is not None and name.endswith(device_domain) and not wildcard:
        if name.count(".") != device_domain.count("."):
            raise _reject(ident, "identity.dns_template", f"a node name is one label under "
                          f"{device_domain[1:]}")
        return
    if any(name.endswith(suffix) for suffix in pol.dns_suffixes):
        return
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in pol.dns_patterns):
        return
    allowed = ", ".join(pol.dns_suffixes + pol.dns_patterns) or "(none)"
    raise _reject(ident, "identifiers.dns_suffixes",
                  f"name is outside the allowed suffixes and patterns ({allowed})")


def check_identifiers(idents: list[Identifier], pol: IdentifierPolicy,
                      device_domain: str | None = None) -> list[Identifier]:
    """Normalize, de-duplicate and check an order's identifiers; returns them sorted."""
    if not idents:
        raise AcmeProblem("malformed", "an order needs at least one identifier")
    if len(idents) > pol.max_identifiers:
        raise AcmeProblem("rejectedIdentifier", f"{len(idents)} identifiers exceed the limit of "
                          f"{pol.max_identifiers} (rule identifiers.max_identifiers)")
    out = sorted({normalize(i) for i in idents}, key=lambda i: (i.type, i.value))
    problems = []
    for ident in out:
        try:
            check_identifier(ident, pol, device_domain)
        except AcmeProblem as p:
            problems.append(p)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise AcmeProblem("rejectedIdentifier",
                          f"{len(problems)} identifiers refused by policy: "
                          + "; ".join(p.detail for p in problems),
                          subproblems=[p.to_json() for p in problems])
    return out
