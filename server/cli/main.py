"""`nodetrust`: the operator CLI. Works on the server's data dir (SQLite in WAL mode lets it
run beside a live server). `enroll` is the node client and needs no data dir; `demo` only
the data dir's demo manufacturer folder."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from server.cli import demo_cmd, eab, enroll_cmd, nodes
from server.cli.output import CliError
from server.config import DEFAULT_CONFIG, ConfigError, load_config
from server.store.repo import Store


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nodetrust", description="nodetrust operator CLI")
    p.add_argument("--config", type=Path, default=None, help=f"server config (default {DEFAULT_CONFIG})")
    p.add_argument("--data-dir", type=Path, default=None, help="server data dir (overrides the config)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="cmd", required=True)
    eab.add_parser(sub)
    enroll_cmd.add_parser(sub)
    demo_cmd.add_parser(sub)
    nodes.add_parser(sub)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.cmd == "enroll":
            return enroll_cmd.run(args)
        cfg = load_config(args.config).with_overrides(data_dir=args.data_dir)
        if args.cmd == "demo":
            return demo_cmd.run(args, cfg.data_dir, cfg.identity)
        if not cfg.db_path.exists():
            raise CliError(f"no nodetrust database at {cfg.db_path}: start nodetrust-server once "
                           "or pass --data-dir")
        store = Store(cfg.db_path, synchronous=cfg.store_synchronous)
        try:
            if args.cmd == "eab":
                return eab.run(args, store)
            if args.cmd in ("nodes", "bootstrap", "revoke"):
                return nodes.run(args, store)
        finally:
            store.close()
    except (CliError, ConfigError) as exc:
        print(f"nodetrust: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
