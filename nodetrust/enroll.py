"""`nodetrust enroll`: the node client, and the reference for device makers.

A node proves which device it is (device-attest-01, signed by its factory bootstrap key) and
gets an operational certificate for a NEW key, on the plain `acme` library:

  account.key (P-256, 0600, reused) -> newAccount -> newOrder [permanent-identifier <device id>]
  -> device-attest-01 -> finalize with a new P-256 key -> node.key (0600) + node.pem (full chain)

With `renew`, RFC 9773 ARI decides when: nothing happens before the suggested window starts
(unless `force`), and the new order carries `replaces`.
"""
from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import josepy as jose
from acme import client, messages
from acme import errors as acme_errors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nodetrust import files
from nodetrust.acme_errors import ENROLL_ERRORS, EnrollError, describe_problem, one_line
from nodetrust.ari import RenewalWindow, cert_id, fetch_window
from nodetrust.attestation import build_att_obj
from nodetrust.bootstrap import Bootstrap
from nodetrust.challenges import IDENTIFIER_PERMANENT, DeviceAttest01, DeviceAttest01Response

# acme only parses identifier types it has seen; the server echoes ours in orders and authzs.
USER_AGENT = "nodetrust-enroll/0.1"
ACCOUNT_KEY, NODE_KEY, NODE_CERT = "account.key", "node.key", "node.pem"


class NewOrder(messages.NewOrder):
    """acme's NewOrder plus RFC 9773 `replaces`."""

    replaces: str | None = jose.field("replaces", omitempty=True)


@dataclass(frozen=True)
class EnrollRequest:
    server: str  # directory URL
    bootstrap: Bootstrap
    out: Path
    verify: str | bool = True  # CA bundle path, or True for the system store
    renew: bool = False
    force: bool = False
    timeout: float = 120.0  # seconds, for the whole run


@dataclass
class EnrollResult:
    action: str  # "enrolled" | "renewed" | "not-due"
    device_id: str
    cert_path: Path
    key_path: Path
    serial: str = ""  # hex
    not_after: dt.datetime | None = None
    dns_names: list[str] = field(default_factory=list)
    uris: list[str] = field(default_factory=list)
    account: str = ""
    order: str = ""
    attested: bool = False  # False when the server reused a valid authorization
    replaces: str | None = None
    renew_from: dt.datetime | None = None  # ARI window start of the certificate now in place
    renew_until: dt.datetime | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def iso(t: dt.datetime | None) -> str | None:
            return t.isoformat() if t else None
        return {"action": self.action, "device_id": self.device_id,
                "cert": str(self.cert_path), "key": str(self.key_path), "serial": self.serial,
                "not_after": iso(self.not_after), "dns_names": self.dns_names,
                "uris": self.uris, "account": self.account, "order": self.order,
                "attested": self.attested, "replaces": self.replaces,
                "renew_from": iso(self.renew_from), "renew_until": iso(self.renew_until),
                "notes": self.notes}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def connect(server: str, account_key: ec.EllipticCurvePrivateKey,
            verify: str | bool) -> client.ClientV2:
    # verify_ssl goes to requests' `verify`, which also takes a CA bundle path; an explicit
    # path is not overridden by REQUESTS_CA_BUNDLE.
    net = client.ClientNetwork(key=jose.JWKEC(key=account_key), alg=jose.ES256,
                               verify_ssl=verify, user_agent=USER_AGENT, timeout=30)  # type: ignore[arg-type]
    return client.ClientV2(client.ClientV2.get_directory(server, net), net)


def register(acme: client.ClientV2) -> str:
    """The account URL for our key: a new account, or the existing one (200 + Location)."""
    reg = messages.NewRegistration.from_data(terms_of_service_agreed=True)
    try:
        return str(acme.new_account(reg).uri)
    except acme_errors.ConflictError as exc:  # the key already has an account
        url = exc.location
        acme.net.account = messages.RegistrationResource(body=messages.Registration(), uri=url)
        return url


def new_order(acme: client.ClientV2, device_id: str,
              replaces: str | None) -> tuple[messages.OrderResource, list[str]]:
    """Post the permanent-identifier order ourselves: ClientV2.new_order derives identifiers
    from a CSR, and ours names none."""
    notes: list[str] = []
    ident = messages.Identifier(typ=IDENTIFIER_PERMANENT, value=device_id)
    try:
        resp = acme._post(acme.directory["newOrder"], NewOrder(identifiers=[ident],
                                                                replaces=replaces))
    except messages.Error as err:
        if replaces is None or err.code != "alreadyReplaced":
            raise
        # A previous run ordered the replacement but never installed it: order afresh.
        notes.append(f"the server says {replaces} is already being replaced; ordering "
                     "without `replaces`")
        resp = acme._post(acme.directory["newOrder"], NewOrder(identifiers=[ident]))
    body = messages.Order.from_json(resp.json())
    authzs = [acme._authzr_from_response(acme._post_as_get(url), uri=url)
              for url in body.authorizations]
    return messages.OrderResource(body=body, uri=resp.headers.get("Location"),
                                  authorizations=authzs), notes


def _pause(response: Any, deadline: float, what: str) -> None:
    """Honour Retry-After (1 s default) without passing the deadline."""
    if time.monotonic() >= deadline:
        raise EnrollError(f"timed out waiting for {what}")
    when = client.ClientV2.retry_after(response, 1)
    wait = (when - dt.datetime.now()).total_seconds()
    time.sleep(max(0.2, min(wait, deadline - time.monotonic(), 10.0)))  # wait-ok: polling remote


def _challenge_error(authz: messages.Authorization) -> str:
    for challb in authz.challenges:
        if challb.error is not None:
            return describe_problem(challb.error)
    return f"authorization is {authz.status.name}"


def authorize(acme: client.ClientV2, orderr: messages.OrderResource, boot: Bootstrap,
              deadline: float) -> bool:
    """Answer device-attest-01 on every pending authorization. True if we attested."""
    attested = False
    for authzr in orderr.authorizations:
        authz, what = authzr.body, f"{authzr.body.identifier.typ.name} {authzr.body.identifier.value}"
        if authz.status == messages.STATUS_VALID:
            continue  # the server reused an earlier attestation for this account
        if authz.status != messages.STATUS_PENDING:
            raise EnrollError(f"authorization for {what} is {authz.status.name}: "
                              f"{_challenge_error(authz)}")
        challb = next((c for c in authz.challenges if isinstance(c.chall, DeviceAttest01)), None)
        if challb is None:
            offered = ", ".join(c.chall.typ for c in authz.challenges) or "none"
            raise EnrollError(f"the server offers no device-attest-01 for {what} "
                              f"(offered: {offered})")
        key_authz = challb.chall.key_authorization(acme.net.key)
        att_obj = build_att_obj(key_authz, boot.key, boot.chain_der)
        challr = acme.answer_challenge(challb, DeviceAttest01Response(att_obj=att_obj))
        attested = True
        status = challr.body.status
        while status not in (messages.STATUS_VALID, messages.STATUS_INVALID):
            resp = acme._post_as_get(authzr.uri)
            authz = messages.Authorization.from_json(resp.json())
            if authz.status != messages.STATUS_PENDING:
                status = authz.status if authz.status == messages.STATUS_VALID else \
                    messages.STATUS_INVALID
                break
            _pause(resp, deadline, f"the attestation for {what} to be checked")
        if status != messages.STATUS_VALID:
            error = challr.body.error
            raise EnrollError("device attestation refused: " +
                              (describe_problem(error) if error else _challenge_error(authz)))
    return attested


def make_csr(key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    """No names at all: the certificate's identity comes from the server's templates for the
    attested device (the draft lets the CSR omit the device id, for privacy)."""
    return x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256())


def finalize(acme: client.ClientV2, orderr: messages.OrderResource,
             csr: x509.CertificateSigningRequest, deadline: float) -> str:
    """The full chain PEM. Polls only if the server answers `processing`."""
    resp = acme._post(orderr.body.finalize, messages.CertificateRequest(csr=csr))
    body = messages.Order.from_json(resp.json())
    while not (body.status == messages.STATUS_VALID and body.certificate):
        if body.status == messages.STATUS_INVALID:
            raise EnrollError("the server refused to issue: " +
                              (describe_problem(body.error) if body.error else "order invalid"))
        _pause(resp, deadline, "the certificate to be issued")
        resp = acme._post_as_get(orderr.uri)
        body = messages.Order.from_json(resp.json())
    return str(acme._post_as_get(body.certificate).text)


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))


def _describe(result: EnrollResult, leaf: x509.Certificate) -> None:
    result.serial = f"{leaf.serial_number:x}"
    result.not_after = leaf.not_valid_after_utc
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        result.dns_names = san.get_values_for_type(x509.DNSName)
        result.uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        pass


def _window(acme: client.ClientV2, leaf: x509.Certificate) -> RenewalWindow:
    window = fetch_window(acme, leaf)
    if window is None:  # no ARI at this server: renew in the last third of the lifetime
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        window = RenewalWindow(leaf.not_valid_before_utc + lifetime * 2 / 3,
                               leaf.not_valid_after_utc, from_ari=False)
    return window


def _current(path: Path) -> x509.Certificate | None:
    if not path.exists():
        return None
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())[0]
    except ValueError as exc:
        raise EnrollError(f"{path} is not a PEM certificate ({exc}); move it away to enroll "
                          "afresh") from None


def enroll(req: EnrollRequest) -> EnrollResult:
    """Enroll (or renew) once. Raises EnrollError, acme/requests errors (see cli_errors)."""
    deadline = time.monotonic() + req.timeout
    req.out.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = req.out / NODE_CERT, req.out / NODE_KEY
    result = EnrollResult(action="enrolled", device_id=req.bootstrap.device_id,
                          cert_path=cert_path, key_path=key_path)
    current = _current(cert_path) if req.renew else None
    account_key, _ = files.load_or_create_ec_key(req.out / ACCOUNT_KEY)
    acme = connect(req.server, account_key, req.verify)

    if current is not None:
        window = None if req.force else _window(acme, current)
        if window is not None and _now() < window.start:
            _describe(result, current)
            result.action, result.renew_from, result.renew_until = \
                "not-due", window.start, window.end
            return result
        result.action = "renewed"
        if "renewalInfo" in acme.directory.to_partial_json():
            result.replaces = cert_id(current)

    result.account = register(acme)
    orderr, result.notes = new_order(acme, req.bootstrap.device_id, result.replaces)
    if result.notes:
        result.replaces = None
    result.order = str(orderr.uri or "")
    result.attested = authorize(acme, orderr, req.bootstrap, deadline)

    # The new key is on disk (0600) before it is used, beside the pair in service, which
    # stays intact until the new certificate has arrived.
    node_key = ec.generate_private_key(ec.SECP256R1())
    pending = req.out / (NODE_KEY + ".pending")
    files.write_private_key(pending, node_key)
    try:
        chain_pem = finalize(acme, orderr, make_csr(node_key), deadline)
        leaf = x509.load_pem_x509_certificates(chain_pem.encode())[0]
        if _spki(leaf.public_key()) != _spki(node_key.public_key()):
            raise EnrollError("the server returned a certificate for another key")
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    os.replace(pending, key_path)
    files.write_atomic(cert_path, chain_pem.encode())
    _describe(result, leaf)
    try:
        window = _window(acme, leaf)
        result.renew_from, result.renew_until = window.start, window.end
    except ENROLL_ERRORS as exc:  # the certificate is installed; the hint is optional
        result.notes.append(f"could not ask when to renew: {one_line(exc, req.server)}")
    return result
