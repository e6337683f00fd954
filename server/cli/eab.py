"""`nodetrust eab create|list|revoke`: External Account Binding keys (RFC 8555 §7.3.4)."""
from __future__ import annotations

import argparse

from server.cli.backend import Backend
from server.cli.nodes import short_time
from server.cli.output import CliError, emit


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("eab", help="external account binding keys")
    eab = p.add_subparsers(dest="eab_cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    c = eab.add_parser("create", parents=[common], help="make a key id + HMAC key for one ACME account")
    c.add_argument("--note", default="", help="who or what the key is for")
    eab.add_parser("list", parents=[common], help="list keys and the accounts they are bound to")
    r = eab.add_parser("revoke", parents=[common], help="refuse a key that is not bound yet")
    r.add_argument("kid")


def run(args: argparse.Namespace, backend: Backend) -> int:
    if args.eab_cmd == "create":
        out = backend.call("eab.create", note=args.note)
        emit(out, as_json=args.json, text=(
            f"kid:      {out['kid']}\nhmac key: {out['hmac_key']}\n"
            "Give both to the node's operator once; the key binds exactly one ACME account, e.g.\n"
            f"  lego --eab --kid {out['kid']} --hmac {out['hmac_key']} ...\n"
            f"  certbot --eab-kid {out['kid']} --eab-hmac-key {out['hmac_key']} ..."))
        return 0
    if args.eab_cmd == "list":
        rows = backend.call("eab.list")
        if not args.json:
            rows = [r | {"created": short_time(r["created"])} for r in rows]
        emit(rows, as_json=args.json, columns=["kid", "status", "account", "created", "note"])
        return 0
    if args.eab_cmd == "revoke":
        out = backend.call("eab.revoke", kid=args.kid)
        emit(out, as_json=args.json,
             text=f"revoked {out['kid']}" + (f" (already bound to account {out['account']}: "
                                             "that account keeps working)" if out["account"] else ""))
        return 0
    raise CliError(f"unknown eab command {args.eab_cmd}")
