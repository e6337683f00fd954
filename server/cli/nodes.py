"""`nodetrust nodes ...`, `nodetrust bootstrap ...`, `nodetrust revoke`: governing enrolled
devices. Every command says what it changed; refusals are one clear line and exit 1."""
from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import Any

from server.cli.output import CliError, emit
from server.config import parse_duration
from server.models import Node, NodeStatus, Status
from server.ra.revocation import ALLOWED_REASONS
from server.store.repo import Store

REASONS = {name.lower(): code for code, name in ALLOWED_REASONS.items()}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    nodes = sub.add_parser("nodes", help="enrolled devices").add_subparsers(dest="nodes_cmd",
                                                                             required=True)
    ls = nodes.add_parser("list", parents=[common], help="nodes with status, owner and expiry")
    ls.add_argument("--owner")
    ls.add_argument("--status", choices=[NodeStatus.PENDING, NodeStatus.ACTIVE,
                                         NodeStatus.DECOMMISSIONED])
    ls.add_argument("--expiring-within", metavar="DURATION",
                    help="only active nodes whose certificate expires within e.g. 24h")
    for name, text in (("show", "one node and its certificate history"),
                       ("approve", "let a pending rejoin (new account) proceed"),
                       ("readmit", "let a decommissioned device enroll again")):
        nodes.add_parser(name, parents=[common], help=text).add_argument("node")
    dec = nodes.add_parser("decommission", parents=[common],
                           help="revoke every certificate of the node and block its bootstrap")
    dec.add_argument("node")
    own = nodes.add_parser("set-owner", parents=[common], help="who answers for the node")
    own.add_argument("node")
    own.add_argument("owner")
    lab = nodes.add_parser("label", parents=[common], help="set k=v labels (k= removes)")
    lab.add_argument("node")
    lab.add_argument("labels", nargs="+", metavar="k=v")

    boot = sub.add_parser("bootstrap", help="the bootstrap (manufacturer) certificate deny list")
    bsub = boot.add_subparsers(dest="bootstrap_cmd", required=True)
    for name, text in (("deny", "refuse a device id or bootstrap serial at enrollment"),
                       ("allow", "take a device id or serial off the deny list")):
        b = bsub.add_parser(name, parents=[common], help=text)
        b.add_argument("value", help="device id, or a bootstrap certificate serial with --serial")
        b.add_argument("--serial", action="store_true", help="VALUE is a certificate serial (hex)")
        b.add_argument("--note", default="")
    bsub.add_parser("list", parents=[common], help="the deny list")

    rv = sub.add_parser("revoke", parents=[common], help="revoke operational certificates")
    which = rv.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", help="certificate serial (hex)")
    which.add_argument("--node", help="every valid certificate of this node")
    rv.add_argument("--reason", default="unspecified", choices=sorted(REASONS))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _node(store: Store, ref: str) -> Node:
    node = store.find_node(ref)
    if node is None:
        raise CliError(f"no node {ref!r} (use a device id, node id or DNS name; "
                       "`nodetrust nodes list` shows them)")
    return node


def _expiry(store: Store, node: Node) -> datetime | None:
    cert = store.get_certificate(node.current_serial) if node.current_serial else None
    return cert.not_after if cert and cert.status == Status.VALID else None


def _row(store: Store, node: Node) -> dict[str, Any]:
    expires = _expiry(store, node)
    return {"node": node.node_id, "device_id": node.device_id, "status": node.status,
            "owner": node.owner, "labels": ",".join(f"{k}={v}" for k, v in node.labels.items()),
            "manufacturer": node.manufacturer, "dns_name": node.dns_name,
            "spiffe_id": node.spiffe_id, "serial": node.current_serial,
            "expires": expires.strftime("%Y-%m-%d %H:%M") if expires else None}


def run(args: argparse.Namespace, store: Store) -> int:
    as_json = bool(getattr(args, "json", False))
    if args.cmd == "revoke":
        return _revoke(args, store, as_json)
    if args.cmd == "bootstrap":
        return _bootstrap(args, store, as_json)
    cmd = args.nodes_cmd
    if cmd == "list":
        nodes = store.list_nodes()
        if args.owner:
            nodes = [n for n in nodes if n.owner == args.owner]
        if args.status:
            nodes = [n for n in nodes if n.status == args.status]
        if args.expiring_within:
            horizon = _now() + parse_duration(args.expiring_within, "--expiring-within", "nodetrust")
            nodes = [n for n in nodes if n.status == NodeStatus.ACTIVE
                     and (e := _expiry(store, n)) is not None and e <= horizon]
        emit([_row(store, n) for n in nodes], as_json=as_json,
             columns=["node", "status", "owner", "labels", "manufacturer", "expires", "serial"])
        return 0
    node = _node(store, args.node)
    if cmd == "show":
        history = [{"serial": c.serial, "status": c.status, "not_before": c.not_before,
                    "not_after": c.not_after, "revoked_at": c.revoked_at,
                    "reason": ALLOWED_REASONS.get(c.revocation_reason or 0)
                    if c.status == Status.REVOKED else None}
                   for c in store.certificates_of_device(node.device_id)]
        data = _row(store, node) | {"bootstrap_serial": node.bootstrap_serial,
                                    "account": node.account_id,
                                    "pending_account": node.pending_account_id,
                                    "last_issued": node.last_issued_at, "certificates": history}
        text = "\n".join(f"{k:>17}: {v if v is not None else '-'}" for k, v in data.items()
                         if k != "certificates")
        text += "\n\ncertificates:\n" + "\n".join(
            f"  {h['serial']}  {h['status']:<8} {h['not_before']:%Y-%m-%d %H:%M} -> "
            f"{h['not_after']:%Y-%m-%d %H:%M}" + (f"  ({h['reason']})" if h["reason"] else "")
            for h in history) if history else "\n\ncertificates: (none)"
        emit(data, as_json=as_json, text=text)
        return 0
    if cmd == "approve":
        n = store.approve_rejoin(node.device_id, _now())
        if n == 0:
            raise CliError(f"node {node.node_id} has no rejoin waiting for approval")
        emit({"node": node.node_id, "approved": n}, as_json=as_json,
             text=f"approved the rejoin of {node.node_id}: {n} authorization(s) now valid")
        return 0
    if cmd == "readmit":
        if node.status != NodeStatus.DECOMMISSIONED:
            raise CliError(f"node {node.node_id} is {node.status}, not decommissioned")
        store.set_node_status(node.device_id, NodeStatus.PENDING, _now())
        emit({"node": node.node_id, "status": NodeStatus.PENDING}, as_json=as_json,
             text=f"readmitted {node.node_id}: it may enroll again with its bootstrap certificate")
        return 0
    if cmd == "decommission":
        revoked = [s for s in store.valid_certificates_of_device(node.device_id)
                   if store.revoke_certificate(s, reason=5, when=_now())]
        store.set_node_status(node.device_id, NodeStatus.DECOMMISSIONED, _now())
        emit({"node": node.node_id, "status": NodeStatus.DECOMMISSIONED, "revoked": revoked},
             as_json=as_json, text=f"decommissioned {node.node_id}: revoked {len(revoked)} "
             "certificate(s) (cessationOfOperation); its bootstrap certificate can no longer enroll")
        return 0
    if cmd == "set-owner":
        store.set_node_owner(node.device_id, args.owner, _now())
        emit({"node": node.node_id, "owner": args.owner}, as_json=as_json,
             text=f"{node.node_id}: owner {node.owner or '-'} -> {args.owner}")
        return 0
    if cmd == "label":
        labels = dict(node.labels)
        for item in args.labels:
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise CliError(f"label {item!r} is not k=v")
            if value:
                labels[key] = value
            else:
                labels.pop(key, None)
        store.set_node_labels(node.device_id, labels, _now())
        emit({"node": node.node_id, "labels": labels}, as_json=as_json,
             text=f"{node.node_id}: labels " + (", ".join(f"{k}={v}" for k, v in labels.items())
                                                  or "(none)"))
        return 0
    raise CliError(f"unknown nodes command {cmd}")


def _bootstrap(args: argparse.Namespace, store: Store, as_json: bool) -> int:
    if args.bootstrap_cmd == "list":
        emit(store.list_denied_bootstrap(), as_json=as_json,
             columns=["value", "kind", "note", "created_at"])
        return 0
    value = args.value.lower().lstrip("0") if args.serial else args.value
    if args.bootstrap_cmd == "deny":
        if not store.deny_bootstrap(value, "serial" if args.serial else "device", args.note, _now()):
            raise CliError(f"{value!r} is already on the deny list")
        emit({"denied": value}, as_json=as_json,
             text=f"denied {value}: enrollments with it are refused from now on")
        return 0
    if not store.allow_bootstrap(value):
        raise CliError(f"{value!r} is not on the deny list")
    emit({"allowed": value}, as_json=as_json, text=f"{value} is off the deny list")
    return 0


def _revoke(args: argparse.Namespace, store: Store, as_json: bool) -> int:
    reason = REASONS[args.reason]
    if args.serial:
        serials = [args.serial.lower().lstrip("0")]
        cert = store.get_certificate(serials[0])
        if cert is None:
            raise CliError(f"no certificate with serial {args.serial}")
        if cert.status != Status.VALID:
            raise CliError(f"certificate {cert.serial} is already {cert.status}")
    else:
        serials = store.valid_certificates_of_device(_node(store, args.node).device_id)
        if not serials:
            raise CliError(f"node {args.node} has no valid certificate")
    done = [s for s in serials if store.revoke_certificate(s, reason=reason, when=_now())]
    emit({"revoked": done, "reason": args.reason}, as_json=as_json,
         text="\n".join(f"revoked {s} ({args.reason})" for s in done))
    return 0


