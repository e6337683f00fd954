"""Operator actions on the store: the one implementation behind both the local CLI
(`nodetrust nodes ...` on the data dir) and the admin API (`server.admin.api`).

Each action takes the store, the time and who acts, checks its preconditions, calls the
store's write methods (which append the audit event, naming `actor`, in the change's own
transaction) and returns what it changed as JSON-able data (times as ISO 8601).
Refusals raise `OpsError` with an HTTP-like status (404 unknown, 409 conflict, 400 bad
input); the CLI prints the message, the admin API sends it as a problem. In the server a
mutating action runs whole on the store's writer thread (`store.write(ops.x, store, ...)`),
so its reads and writes are one transaction.
"""
from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from server.jws import b64e
from server.models import EabKey, Node, NodeStatus, Status
from server.ra.revocation import ALLOWED_REASONS
from server.store import audit as audit_log
from server.store import stats
from server.store.repo import Store

REASONS = {name.lower(): code for code, name in ALLOWED_REASONS.items()}
NODE_STATUSES = (NodeStatus.PENDING, NodeStatus.ACTIVE, NodeStatus.DECOMMISSIONED)
NODE_COLUMNS = ["node", "status", "owner", "labels", "manufacturer", "expires", "serial"]


class OpsError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt is not None else None


def find_node(store: Store, ref: str) -> Node:
    node = store.find_node(ref)
    if node is None:
        raise OpsError(f"no node {ref!r} (use a device id, node id or DNS name; "
                       "`nodetrust nodes list` shows them)", 404)
    return node


def _row(node: Node, expires: datetime | None) -> dict[str, Any]:
    return {"node": node.node_id, "device_id": node.device_id, "status": node.status,
            "owner": node.owner, "labels": ",".join(f"{k}={v}" for k, v in node.labels.items()),
            "manufacturer": node.manufacturer, "dns_name": node.dns_name,
            "spiffe_id": node.spiffe_id, "serial": node.current_serial, "expires": iso(expires)}


# -- reading ------------------------------------------------------------------------------
def list_nodes(store: Store, now: datetime, *, owner: str | None = None,
               status: str | None = None,
               expiring_within: timedelta | None = None) -> list[dict[str, Any]]:
    """The inventory; `expiring_within` keeps the expiry watch's nodes: active, certificate
    ending inside the window, no newer certificate or renewal order in sight."""
    if status is not None and status not in NODE_STATUSES:
        raise OpsError(f"status {status!r} is not one of {', '.join(NODE_STATUSES)}")
    nodes = store.list_nodes()
    if owner:
        nodes = [n for n in nodes if n.owner == owner]
    if status:
        nodes = [n for n in nodes if n.status == status]
    if expiring_within is not None:
        watched = {e.device_id for e in stats.expiry_watch(store, now, expiring_within)}
        nodes = [n for n in nodes if n.device_id in watched]
    expiries = stats.current_expiries(store)
    return [_row(n, expiries.get(n.device_id)) for n in nodes]


def show_node(store: Store, ref: str) -> dict[str, Any]:
    node = find_node(store, ref)
    history = [{"serial": c.serial, "status": c.status, "not_before": iso(c.not_before),
                "not_after": iso(c.not_after), "revoked_at": iso(c.revoked_at),
                "reason": ALLOWED_REASONS.get(c.revocation_reason or 0)
                if c.status == Status.REVOKED else None}
               for c in store.certificates_of_device(node.device_id)]
    return _row(node, stats.current_expiries(store).get(node.device_id)) | {
        "bootstrap_serial": node.bootstrap_serial, "account": node.account_id,
        "pending_account": node.pending_account_id, "last_issued": iso(node.last_issued_at),
        "created": iso(node.created_at), "certificates": history}


def expiring(store: Store, now: datetime, within: timedelta) -> list[dict[str, Any]]:
    return [{"node": e.node_id, "device_id": e.device_id, "owner": e.owner, "serial": e.serial,
             "expires": iso(e.not_after),
             "seconds_left": int((e.not_after - now).total_seconds())}
            for e in stats.expiry_watch(store, now, within)]


def bootstrap_list(store: Store) -> list[dict[str, str]]:
    return store.list_denied_bootstrap()


def eab_list(store: Store) -> list[dict[str, Any]]:
    return [{"kid": k.kid, "created": iso(k.created_at), "account": k.account_id,
             "status": "revoked" if k.revoked else ("bound" if k.account_id else "unused"),
             "note": k.note} for k in store.list_eab_keys()]


# -- changing -------------------------------------------------------------------------------
def approve(store: Store, ref: str, *, now: datetime, actor: str) -> dict[str, Any]:
    node = find_node(store, ref)
    n = store.approve_rejoin(node.device_id, now, actor=actor)
    if n == 0:
        raise OpsError(f"node {node.node_id} has no rejoin waiting for approval", 409)
    return {"node": node.node_id, "approved": n}


def readmit(store: Store, ref: str, *, now: datetime, actor: str) -> dict[str, Any]:
    node = find_node(store, ref)
    if node.status != NodeStatus.DECOMMISSIONED:
        raise OpsError(f"node {node.node_id} is {node.status}, not decommissioned", 409)
    store.set_node_status(node.device_id, NodeStatus.PENDING, now, actor=actor)
    return {"node": node.node_id, "status": NodeStatus.PENDING, "previous_status": node.status}


def decommission(store: Store, ref: str, *, now: datetime, actor: str) -> dict[str, Any]:
    """Revoke every valid certificate of the node (cessationOfOperation) and block its
    bootstrap identity until `readmit`."""
    node = find_node(store, ref)
    revoked = [s for s in store.valid_certificates_of_device(node.device_id)
               if store.revoke_certificate(s, reason=REASONS["cessationofoperation"], when=now,
                                           actor=actor, via="decommission")]
    store.set_node_status(node.device_id, NodeStatus.DECOMMISSIONED, now, actor=actor)
    return {"node": node.node_id, "status": NodeStatus.DECOMMISSIONED,
            "previous_status": node.status, "revoked": revoked}


def set_owner(store: Store, ref: str, owner: str, *, now: datetime,
              actor: str) -> dict[str, Any]:
    node = find_node(store, ref)
    store.set_node_owner(node.device_id, owner or None, now, actor=actor)
    return {"node": node.node_id, "owner": owner or None, "previous_owner": node.owner}


def set_labels(store: Store, ref: str, items: list[str], *, now: datetime,
               actor: str) -> dict[str, Any]:
    """`k=v` sets a label, `k=` removes it."""
    node = find_node(store, ref)
    if not items:
        raise OpsError("name at least one label as k=v (k= removes it)")
    labels = dict(node.labels)
    for item in items:
        key, eq, value = str(item).partition("=")
        if not eq or not key:
            raise OpsError(f"label {item!r} is not k=v")
        if value:
            labels[key] = value
        else:
            labels.pop(key, None)
    store.set_node_labels(node.device_id, labels, now, actor=actor)
    return {"node": node.node_id, "labels": labels, "previous_labels": node.labels}


def revoke(store: Store, *, serial: str | None = None, node: str | None = None,
           reason: str = "unspecified", now: datetime, actor: str) -> dict[str, Any]:
    """One certificate by serial (hex), or every valid certificate of a node."""
    if (serial is None) == (node is None):
        raise OpsError("name either a certificate serial or a node")
    code = REASONS.get(reason.lower())
    if code is None:
        raise OpsError(f"reason {reason!r} is not one of {', '.join(sorted(REASONS))}")
    if serial is not None:
        serials = [serial.lower().lstrip("0")]
        cert = store.get_certificate(serials[0])
        if cert is None:
            raise OpsError(f"no certificate with serial {serial}", 404)
        if cert.status != Status.VALID:
            raise OpsError(f"certificate {cert.serial} is already {cert.status}", 409)
    else:
        assert node is not None
        serials = store.valid_certificates_of_device(find_node(store, node).device_id)
        if not serials:
            raise OpsError(f"node {node} has no valid certificate", 409)
    done = [s for s in serials if store.revoke_certificate(s, reason=code, when=now, actor=actor,
                                                           via="operator")]
    return {"revoked": done, "reason": reason.lower()}


def bootstrap_deny(store: Store, value: str, *, serial: bool, note: str, now: datetime,
                   actor: str) -> dict[str, Any]:
    """Refuse a device id (or, with `serial`, a bootstrap certificate serial) at enrollment."""
    value = value.lower().lstrip("0") if serial else value
    if not value:
        raise OpsError("name a device id or a bootstrap certificate serial")
    kind = "serial" if serial else "device"
    if not store.deny_bootstrap(value, kind, note, now, actor=actor):
        raise OpsError(f"{value!r} is already on the deny list", 409)
    return {"denied": value, "kind": kind, "note": note}


def bootstrap_allow(store: Store, value: str, *, serial: bool, now: datetime,
                    actor: str) -> dict[str, Any]:
    value = value.lower().lstrip("0") if serial else value
    if not store.allow_bootstrap(value, actor=actor):
        raise OpsError(f"{value!r} is not on the deny list", 404)
    return {"allowed": value}


def eab_create(store: Store, note: str, *, now: datetime, actor: str) -> dict[str, Any]:
    """A key id + HMAC key binding exactly one ACME account; the HMAC key is shown once."""
    key = EabKey(kid="kid-" + secrets.token_urlsafe(12), hmac_key=secrets.token_bytes(32),
                 created_at=now, note=note)
    store.insert_eab_key(key, actor=actor)
    return {"kid": key.kid, "hmac_key": b64e(key.hmac_key), "note": key.note}


def eab_revoke(store: Store, kid: str, *, now: datetime, actor: str) -> dict[str, Any]:
    key = store.get_eab_key(kid)
    if key is None:
        raise OpsError(f"no EAB key {kid!r}", 404)
    if not store.revoke_eab_key(kid, actor=actor):
        raise OpsError(f"EAB key {kid!r} is already revoked", 409)
    return {"kid": kid, "revoked": True, "account": key.account_id}


# -- the audit log --------------------------------------------------------------------------
def audit_list(store: Store, *, node: str | None = None, event: str | None = None,
               limit: int | str | None = 50) -> list[dict[str, Any]]:
    """The newest `limit` events, oldest first. `node` is any name find_node knows; a node
    no longer in the inventory still matches by its node id as given."""
    try:
        n = int(limit) if limit not in (None, "") else None
    except ValueError:
        raise OpsError(f"limit {limit!r} is not a number") from None
    if n is not None and n < 1:
        raise OpsError("limit must be at least 1")
    found = store.find_node(node) if node else None
    return [r.to_json() for r in audit_log.entries(
        store, node=found.node_id if found else (node or None), event=event or None, limit=n)]


def audit_verify(store: Store) -> dict[str, Any]:
    """Walk the hash chain (and compare it with the mirror file when there is one)."""
    path = store.audit_mirror
    mirror = audit_log.read_mirror(path) if path is not None and path.exists() else None
    rows, head, problems = audit_log.verify_store(store, mirror)
    return {"ok": not problems, "rows": rows, "head": head,
            "mirror": str(path) if mirror is not None else None,
            "problems": [{"seq": p.seq, "kind": p.kind, "message": p.message} for p in problems]}
