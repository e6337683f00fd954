"""`nodetrust`: the operator CLI. Works on the server's data dir (SQLite in WAL mode lets it
run beside a live server), or with `--server-admin URL` (or NODETRUST_ADMIN_URL) against a
running server's admin API with the token from <data-dir>/admin.token. `enroll` is the node
client and needs no data dir; `demo` only the data dir's demo manufacturer folder."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from server.cli import audit, demo_cmd, eab, enroll_cmd, nodes
from server.cli.backend import Backend, LocalBackend, RemoteBackend, read_token
from server.cli.output import CliError
from server.config import DEFAULT_CONFIG, ConfigError, ServerConfig, load_config
from server.store.repo import Store

ADMIN_URL_ENV = "NODETRUST_ADMIN_URL"
GOVERNING = ("nodes", "bootstrap", "revoke", "eab", "audit")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nodetrust", description="nodetrust operator CLI")
    p.add_argument("--config", type=Path, default=None, help=f"server config (default {DEFAULT_CONFIG})")
    p.add_argument("--data-dir", type=Path, default=None, help="server data dir (overrides the config)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    remote = p.add_argument_group("remote mode (a running server's admin API)")
    remote.add_argument("--server-admin", metavar="URL", default=os.environ.get(ADMIN_URL_ENV),
                        help=f"e.g. https://127.0.0.1:14002 (or ${ADMIN_URL_ENV}); without it the "
                             "commands work on the data dir")
    remote.add_argument("--admin-token-file", type=Path, default=None,
                        help="bearer token (default <data-dir>/admin.token)")
    remote.add_argument("--admin-ca", type=Path, default=None,
                        help="CA bundle for the server's HTTPS (default <data-dir>/ca/root.pem)")
    sub = p.add_subparsers(dest="cmd", required=True)
    eab.add_parser(sub)
    enroll_cmd.add_parser(sub)
    demo_cmd.add_parser(sub)
    nodes.add_parser(sub)
    audit.add_parser(sub)
    return p.parse_args(argv)


def open_backend(args: argparse.Namespace) -> Backend:
    if args.server_admin:
        cfg: ServerConfig | None = None
        if args.admin_token_file is None or args.admin_ca is None:
            cfg = load_config(args.config).with_overrides(data_dir=args.data_dir)
        token_file = args.admin_token_file or (cfg.admin_token_path if cfg else None)
        cafile = args.admin_ca or (cfg.ca_dir / "root.pem" if cfg else None)
        assert token_file is not None
        if not args.server_admin.startswith("https://"):
            raise CliError(f"--server-admin {args.server_admin!r}: the admin API is HTTPS only "
                           "(https://HOST:PORT)")
        if cafile is not None and not cafile.exists():
            raise CliError(f"no CA bundle at {cafile}: pass --admin-ca with the server's root")
        return RemoteBackend(args.server_admin, read_token(token_file), cafile)
    cfg = load_config(args.config).with_overrides(data_dir=args.data_dir)
    if not cfg.db_path.exists():
        raise CliError(f"no nodetrust database at {cfg.db_path}: start nodetrust-server once, "
                       "pass --data-dir, or use --server-admin URL")
    return LocalBackend(Store(cfg.db_path, synchronous=cfg.store_synchronous,
                              audit_mirror=cfg.audit.mirror_file))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.cmd == "enroll":
            return enroll_cmd.run(args)
        if args.cmd == "demo":
            cfg = load_config(args.config).with_overrides(data_dir=args.data_dir)
            return demo_cmd.run(args, cfg.data_dir, cfg.identity)
        if args.cmd in GOVERNING:
            backend = open_backend(args)
            try:
                command = {"eab": eab.run, "audit": audit.run}.get(args.cmd, nodes.run)
                return command(args, backend)
            finally:
                backend.close()
    except (CliError, ConfigError) as exc:
        print(f"nodetrust: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
