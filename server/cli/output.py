"""Operator output: aligned tables for people, `--json` for scripts, errors on stderr."""
from __future__ import annotations

import json
import sys
from typing import Any, Sequence


class CliError(Exception):
    """A clear message for the operator; the CLI prints it and exits non-zero."""


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "") if r.get(c) is not None else "-") for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    head = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([head.rstrip(), *lines])


def emit(data: Any, *, as_json: bool, columns: Sequence[str] | None = None,
         text: str | None = None) -> None:
    if as_json:
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif text is not None:
        print(text)
    else:
        rows = data if isinstance(data, list) else [data]
        print(table(rows, columns or list(rows[0]) if rows else []))
