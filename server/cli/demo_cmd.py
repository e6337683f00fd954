"""`nodetrust demo device <device-id> --out DIR`: a bootstrap certificate from the demo
manufacturer, so a newcomer can enroll a node in one minute. The demo root lives in the
server's data dir and is trusted only as a manufacturer root (see server/demo.py)."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from server.cli.enroll_cmd import DEFAULT_SERVER
from server.cli.output import CliError, emit
from server.demo import DEMO_DIR, ensure_demo_manufacturer, issue_bootstrap, write_bootstrap
from server.errors import ValidationFailure
from server.identity import IdentitySettings, node_identity


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="demo material for trying nodetrust out")
    demo = p.add_subparsers(dest="demo_cmd", required=True)
    d = demo.add_parser("device", help="mint a demo bootstrap certificate + key for one device")
    d.add_argument("device_id", help="the device's serial, e.g. SN-0001")
    d.add_argument("--out", type=Path, required=True, help="folder for bootstrap.pem/.key")
    # SUPPRESS: these may also come before the subcommand (global options).
    d.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS,
                   help="the server's data dir, where the demo manufacturer root is kept")
    d.add_argument("--id-in", choices=("serialNumber", "permanentIdentifier"),
                   default="serialNumber", help="where the certificate carries the device id")
    d.add_argument("--server", default=DEFAULT_SERVER, help="server URL for the printed commands")
    d.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable output")


def run(args: argparse.Namespace, data_dir: Path, settings: IdentitySettings) -> int:
    """`settings`: the server conf's identity templates, so the printed names are the ones
    the server will issue."""
    try:
        ident = node_identity(args.device_id, settings)
    except ValidationFailure as exc:
        raise CliError(exc.detail) from None
    data_dir = data_dir.resolve()
    created = not (data_dir / DEMO_DIR / "root.pem").exists()
    root, root_key, root_path = ensure_demo_manufacturer(data_dir)
    cert, key = issue_bootstrap(args.device_id, root, root_key, id_in=args.id_in)
    cert_path, key_path = write_bootstrap(args.out.resolve(), cert, key)
    ca = data_dir / "ca" / "root.pem"
    certbot = ["certbot", "certonly", "--server", args.server,
               "--authenticator", "nodetrust-device-attest",
               "--nodetrust-device-attest-cert", str(cert_path),
               "--nodetrust-device-attest-key", str(key_path),
               "-d", ident.dns_name, "--agree-tos", "--register-unsafely-without-email"]
    enroll = ["nodetrust", "enroll", "--server", args.server, "--bootstrap-cert", str(cert_path),
              "--bootstrap-key", str(key_path), "--out", str(args.out.resolve() / "node"),
              "--ca-bundle", str(ca)]
    out = {"device_id": args.device_id, "node_id": ident.node_id, "dns_name": ident.dns_name,
           "spiffe_id": ident.spiffe_id, "bootstrap_cert": str(cert_path),
           "bootstrap_key": str(key_path), "manufacturer_root": str(root_path),
           "manufacturer_root_created": created, "certbot": shlex.join(certbot),
           "enroll": shlex.join(enroll)}
    if getattr(args, "json", False):
        emit(out, as_json=True)
        return 0
    print("\n".join([
        f"device {args.device_id} -> node {ident.node_id}",
        f"  bootstrap certificate  {cert_path}  (device id in {args.id_in})",
        f"  bootstrap key          {key_path}  (0600)",
        f"  demo manufacturer root {root_path}" + ("  (new: a running server picks it up on "
                                                  "SIGHUP or restart)" if created else ""),
        f"  the node will be       DNS {ident.dns_name}, URI {ident.spiffe_id}",
        "",
        "Next, with certbot (the plugin ships with nodetrust):",
        f"  REQUESTS_CA_BUNDLE={shlex.quote(str(ca))} {shlex.join(certbot)}",
        "or with the nodetrust node client:",
        f"  {shlex.join(enroll)}",
    ]))
    return 0

