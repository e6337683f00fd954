"""`nodetrust eab create|list|revoke`: External Account Binding keys (RFC 8555 §7.3.4)."""
from __future__ import annotations

import argparse
import secrets
from datetime import datetime, timezone

from server.cli.output import CliError, emit
from server.jws import b64e
from server.models import EabKey
from server.store.repo import Store


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


def run(args: argparse.Namespace, store: Store) -> int:
    if args.eab_cmd == "create":
        key = EabKey(kid="kid-" + secrets.token_urlsafe(12), hmac_key=secrets.token_bytes(32),
                     created_at=datetime.now(timezone.utc), note=args.note)
        store.insert_eab_key(key)
        out = {"kid": key.kid, "hmac_key": b64e(key.hmac_key), "note": key.note}
        emit(out, as_json=args.json, text=(
            f"kid:      {out['kid']}\nhmac key: {out['hmac_key']}\n"
            "Give both to the node's operator once; the key binds exactly one ACME account, e.g.\n"
            f"  lego --eab --kid {out['kid']} --hmac {out['hmac_key']} ...\n"
            f"  certbot --eab-kid {out['kid']} --eab-hmac-key {out['hmac_key']} ..."))
        return 0
    if args.eab_cmd == "list":
        rows = [{"kid": k.kid, "created": k.created_at.strftime("%Y-%m-%d %H:%M"),
                 "account": k.account_id, "status": "revoked" if k.revoked else
                 ("bound" if k.account_id else "unused"), "note": k.note}
                for k in store.list_eab_keys()]
        emit(rows, as_json=args.json, columns=["kid", "status", "account", "created", "note"])
        return 0
    if args.eab_cmd == "revoke":
        key = store.get_eab_key(args.kid)
        if key is None:
            raise CliError(f"no EAB key {args.kid!r}")
        if not store.revoke_eab_key(args.kid):
            raise CliError(f"EAB key {args.kid!r} is already revoked")
        emit({"kid": args.kid, "revoked": True}, as_json=args.json,
             text=f"revoked {args.kid}" + (f" (already bound to account {key.account_id}: that "
                                          "account keeps working)" if key.account_id else ""))
        return 0
    raise CliError(f"unknown eab command {args.eab_cmd}")
