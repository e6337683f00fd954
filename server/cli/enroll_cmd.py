"""`nodetrust enroll`: the node client (logic in nodetrust.enroll; this is argv and output)."""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
from pathlib import Path

from server.cli.output import CliError, emit

DEFAULT_SERVER = "https://127.0.0.1:14000/acme/directory"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("enroll", help="node: get (or renew) an operational certificate with "
                       "the device's bootstrap certificate (device-attest-01)")
    p.add_argument("--server", default=DEFAULT_SERVER, help=f"ACME directory URL (default {DEFAULT_SERVER})")
    p.add_argument("--bootstrap-cert", type=Path, required=True,
                   help="bootstrap (IDevID) certificate, PEM: leaf then intermediates")
    p.add_argument("--bootstrap-key", type=Path, required=True, help="its private key, PEM")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for account.key, node.key (0600) and node.pem (full chain)")
    p.add_argument("--ca-bundle", type=Path, default=None,
                   help="PEM trusted for the server's HTTPS (default: $REQUESTS_CA_BUNDLE)")
    p.add_argument("--renew", action="store_true",
                   help="if node.pem exists, renew only when ARI says it is time")
    p.add_argument("--force", action="store_true", help="with --renew: renew now")
    p.add_argument("--daemon", action="store_true",
                   help="stay running: enroll if needed, then renew inside each ARI window "
                        "(see conf/systemd/ for a unit)")
    p.add_argument("--check-every", type=float, default=3600.0, metavar="SECONDS",
                   help="with --daemon: ask the server at least this often (default 3600)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole run")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable output")


def _verify(ca_bundle: Path | None) -> str | bool:
    if ca_bundle is None:
        env = os.environ.get("REQUESTS_CA_BUNDLE")
        if not env:
            return True
        ca_bundle = Path(env)
    if not ca_bundle.is_file():
        raise CliError(f"--ca-bundle: {ca_bundle} is not a file")
    return str(ca_bundle.resolve())


def _when(t: dt.datetime | None) -> str:
    if t is None:
        return "-"
    delta = t - dt.datetime.now(dt.UTC)
    hours, rest = divmod(int(abs(delta.total_seconds())), 3600)
    rel = f"{hours}h{rest // 60:02d}m"
    return f"{t:%Y-%m-%d %H:%M:%S} UTC ({'in ' + rel if delta.total_seconds() > 0 else rel + ' ago'})"


def run(args: argparse.Namespace) -> int:
    # Imported here: the operator commands need neither acme's client nor requests.
    from nodetrust.acme_errors import ENROLL_ERRORS, one_line
    from nodetrust.bootstrap import BootstrapError, open_bootstrap
    from nodetrust.enroll import EnrollRequest, enroll

    if args.force and not args.renew:
        raise CliError("--force only makes sense with --renew")
    try:
        boot = open_bootstrap(args.bootstrap_cert, args.bootstrap_key)
    except BootstrapError as exc:
        raise CliError(f"--bootstrap-{exc.which}: {exc}") from None
    req = EnrollRequest(server=args.server, bootstrap=boot, out=args.out,
                        verify=_verify(args.ca_bundle), renew=args.renew, force=args.force,
                        timeout=args.timeout)
    if args.daemon:
        from nodetrust.renewer import run_daemon

        def report(line: str) -> None:
            print(f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ} nodetrust enroll: {line}",
                  flush=True)

        return run_daemon(req, check_every=args.check_every, report=report,
                          errors=ENROLL_ERRORS, describe=lambda e: one_line(e, args.server))
    try:
        result = enroll(req)
    except ENROLL_ERRORS as exc:
        raise CliError(one_line(exc, args.server)) from None
    if getattr(args, "json", False):
        emit(result.to_json(), as_json=True)
        return 0
    if result.action == "not-due":
        print(f"not due: {result.cert_path} (serial {result.serial}) stays in place; the "
              f"server suggests renewing from {_when(result.renew_from)}.\n"
              "Run again then (or add --force to renew now).")
        return 0
    again = ["nodetrust", "enroll", "--renew", "--server", args.server,
             "--bootstrap-cert", str(args.bootstrap_cert), "--bootstrap-key",
             str(args.bootstrap_key), "--out", str(args.out)]
    if args.ca_bundle:
        again += ["--ca-bundle", str(args.ca_bundle)]
    how = ("device-attest-01 answered" if result.attested
           else "an earlier valid authorization was reused")
    replacing = f" (replacing {result.replaces})" if result.replaces else ""
    lines = [f"{result.action} device {result.device_id}{replacing}",
             (f"  certificate  {result.cert_path}  serial {result.serial}, valid until "
              f"{_when(result.not_after)}"),
             *(f"  name         DNS {n}" for n in result.dns_names),
             *(f"  name         URI {u}" for u in result.uris),
             (f"  key          {result.key_path}  new P-256 key, mode 0600 (the bootstrap "
              "key only signed the attestation)"),
             f"  account      {result.account}  key {args.out / 'account.key'}",
             f"  attestation  {how}",
             *(f"  note         {n}" for n in result.notes),
             f"  renew from   {_when(result.renew_from)}: {shlex.join(again)}"]
    print("\n".join(lines))
    return 0
