"""`nodetrust audit list|verify`: the hash-chained audit log (server/store/audit.py).
`list` shows who did what to which node; `verify` walks the chain and exits 1 naming the
first edited, deleted or reordered row. Runs on the data dir or through the admin API."""
from __future__ import annotations

import argparse
import json
from typing import Any

from server.cli.backend import Backend
from server.cli.output import CliError, emit

COLUMNS = ["seq", "time", "event", "actor", "subject", "node", "detail"]
DETAIL_WIDTH = 60
MORE_PROBLEMS = 9  # the first bad row is what matters; a few more give the extent


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    audit = sub.add_parser("audit", help="the tamper-evident audit log").add_subparsers(
        dest="audit_cmd", required=True)
    ls = audit.add_parser("list", parents=[common], help="recent events, oldest first")
    ls.add_argument("--node", help="only events about this node (device id, node id or DNS name)")
    ls.add_argument("--event", help="only this event, or a family: 'node' matches node.*")
    ls.add_argument("--limit", type=int, default=50, metavar="N", help="the newest N (default 50)")
    audit.add_parser("verify", parents=[common],
                     help="check the hash chain; exit 1 naming the first bad row")


def short_detail(detail: dict[str, Any]) -> str:
    """`k=v k=v`, cut to fit a table row; `--json` has all of it."""
    parts = []
    for key, value in sorted(detail.items()):
        if isinstance(value, (dict, list)):
            value = json.dumps(value, separators=(",", ":"), sort_keys=True)
        parts.append(f"{key}={value}")
    text = " ".join(parts)
    return text if len(text) <= DETAIL_WIDTH else text[:DETAIL_WIDTH - 1] + "…"


def _time(at: str) -> str:
    return at[:19].replace("T", " ")  # ISO 8601 UTC -> 'YYYY-MM-DD HH:MM:SS'


def run(args: argparse.Namespace, backend: Backend) -> int:
    as_json = bool(getattr(args, "json", False))
    if args.audit_cmd == "list":
        rows = backend.call("audit.list", node=args.node, event=args.event, limit=args.limit)
        if as_json:
            emit(rows, as_json=True)
        else:
            emit([r | {"time": _time(r["at"]), "detail": short_detail(r["detail"])} for r in rows],
                 as_json=False, columns=COLUMNS)
        return 0
    if args.audit_cmd == "verify":
        out = backend.call("audit.verify")
        if as_json:
            emit(out, as_json=True)
            return 0 if out["ok"] else 1
        if not out["ok"]:
            first, *rest = [p["message"] for p in out["problems"]]
            more = "".join(f"\n  also: {m}" for m in rest[:MORE_PROBLEMS])
            if len(rest) > MORE_PROBLEMS:
                more += f"\n  ... {len(rest) - MORE_PROBLEMS} more"
            raise CliError(f"audit verify: {first}{more}")
        mirror = f"; matches the mirror {out['mirror']}" if out.get("mirror") else ""
        print(f"audit verify: {out['rows']} row(s), chain intact "
              f"(head {out['head'][:16]}…){mirror}")
        return 0
    raise CliError(f"unknown audit command {args.audit_cmd}")
