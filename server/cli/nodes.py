"""`nodetrust nodes ...`, `nodetrust bootstrap ...`, `nodetrust revoke`: governing enrolled
devices. Every command says what it changed; refusals are one clear line and exit 1.
The actions are `server.ops`, run on the data dir or through the admin API (`backend`)."""
from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from server.cli.backend import Backend
from server.cli.output import CliError, emit
from server.ops import NODE_COLUMNS, NODE_STATUSES, REASONS


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    nodes = sub.add_parser("nodes", help="enrolled devices").add_subparsers(dest="nodes_cmd",
                                                                             required=True)
    ls = nodes.add_parser("list", parents=[common], help="nodes with status, owner and expiry")
    ls.add_argument("--owner")
    ls.add_argument("--status", choices=NODE_STATUSES)
    ls.add_argument("--expiring-within", metavar="DURATION",
                    help="only active nodes whose certificate expires within e.g. 24h with "
                         "no newer certificate or renewal in flight")
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
        if name == "deny":
            b.add_argument("--note", default="")
    bsub.add_parser("list", parents=[common], help="the deny list")

    rv = sub.add_parser("revoke", parents=[common], help="revoke operational certificates")
    which = rv.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", help="certificate serial (hex)")
    which.add_argument("--node", help="every valid certificate of this node")
    rv.add_argument("--reason", default="unspecified", choices=sorted(REASONS))


def short_time(value: Any) -> str | None:
    """ISO 8601 -> 'YYYY-MM-DD HH:MM' for tables."""
    if not value:
        return None
    return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M")


def run(args: argparse.Namespace, backend: Backend) -> int:
    as_json = bool(getattr(args, "json", False))
    if args.cmd == "revoke":
        out = backend.call("revoke", serial=args.serial, node=args.node, reason=args.reason)
        emit(out, as_json=as_json,
             text="\n".join(f"revoked {s} ({out['reason']})" for s in out["revoked"]))
        return 0
    if args.cmd == "bootstrap":
        return _bootstrap(args, backend, as_json)
    cmd = args.nodes_cmd
    if cmd == "list":
        rows = backend.call("nodes.list", owner=args.owner, status=args.status,
                            expiring_within=args.expiring_within)
        if as_json:
            emit(rows, as_json=True)
        else:
            emit([r | {"expires": short_time(r["expires"])} for r in rows], as_json=False,
                 columns=NODE_COLUMNS)
        return 0
    if cmd == "show":
        data = backend.call("nodes.show", node=args.node)
        emit(data, as_json=as_json, text=_show_text(data))
        return 0
    if cmd == "approve":
        out = backend.call("nodes.approve", node=args.node)
        emit(out, as_json=as_json, text=f"approved the rejoin of {out['node']}: "
             f"{out['approved']} authorization(s) now valid")
        return 0
    if cmd == "readmit":
        out = backend.call("nodes.readmit", node=args.node)
        emit(out, as_json=as_json, text=f"readmitted {out['node']}: it may enroll again with "
             "its bootstrap certificate")
        return 0
    if cmd == "decommission":
        out = backend.call("nodes.decommission", node=args.node)
        emit(out, as_json=as_json, text=f"decommissioned {out['node']}: revoked "
             f"{len(out['revoked'])} certificate(s) (cessationOfOperation); its bootstrap "
             "certificate can no longer enroll")
        return 0
    if cmd == "set-owner":
        out = backend.call("nodes.set_owner", node=args.node, owner=args.owner)
        emit(out, as_json=as_json, text=f"{out['node']}: owner {out['previous_owner'] or '-'} "
             f"-> {out['owner'] or '-'}")
        return 0
    if cmd == "label":
        out = backend.call("nodes.label", node=args.node, labels=list(args.labels))
        emit(out, as_json=as_json, text=f"{out['node']}: labels " + (
            ", ".join(f"{k}={v}" for k, v in out["labels"].items()) or "(none)"))
        return 0
    raise CliError(f"unknown nodes command {cmd}")


def _show_text(data: dict[str, Any]) -> str:
    text = "\n".join(f"{k:>17}: {v if v is not None else '-'}" for k, v in data.items()
                     if k != "certificates")
    history = data["certificates"]
    if not history:
        return text + "\n\ncertificates: (none)"
    return text + "\n\ncertificates:\n" + "\n".join(
        f"  {h['serial']}  {h['status']:<8} {short_time(h['not_before'])} -> "
        f"{short_time(h['not_after'])}" + (f"  ({h['reason']})" if h["reason"] else "")
        for h in history)


def _bootstrap(args: argparse.Namespace, backend: Backend, as_json: bool) -> int:
    if args.bootstrap_cmd == "list":
        emit(backend.call("bootstrap.list"), as_json=as_json,
             columns=["value", "kind", "note", "created_at"])
        return 0
    if args.bootstrap_cmd == "deny":
        out = backend.call("bootstrap.deny", value=args.value, serial=args.serial, note=args.note)
        emit(out, as_json=as_json,
             text=f"denied {out['denied']}: enrollments with it are refused from now on")
        return 0
    out = backend.call("bootstrap.allow", value=args.value, serial=args.serial)
    emit(out, as_json=as_json, text=f"{out['allowed']} is off the deny list")
    return 0
