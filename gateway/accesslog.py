"""JSON access log, one line per request, written in batches.

Per-request cost matters on the data path: lines are formatted with the identity's pre-encoded
fields and appended to a list; a timer (or a full batch) writes them out in one call.
"""

from __future__ import annotations

import asyncio
import sys
import time
from json.encoder import encode_basestring  # the C escaper json.dumps uses, without its setup
from typing import IO

from gateway.identity import Identity

__all__ = ["AccessLog"]

_BATCH = 512
_FLUSH_EVERY = 0.5


class AccessLog:
    def __init__(self, target: str) -> None:
        """target: "-" for stdout, "" to disable, else a file appended to."""
        self.enabled = target != ""
        self._file: IO[str] | None = None
        if target == "-":
            self._file = sys.stdout
        elif target:
            self._file = open(target, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def log(self, ident: Identity | None, method: str, host: str, path: str, rule: str,
            status: int, upstream_seconds: float | None) -> None:
        if not self.enabled:
            return
        up = "null" if upstream_seconds is None else f"{upstream_seconds * 1000:.3f}"
        prefix = ident.log_prefix if ident is not None else '"node":"","spiffe":"","serial":"",'
        enc = encode_basestring
        self._lines.append(
            f'{{"ts":{time.time():.3f},{prefix}"method":{enc(method)},"host":{enc(host)},'
            f'"path":{enc(path)},"rule":{enc(rule)},"status":{status},"upstream_ms":{up}}}\n')
        if len(self._lines) >= _BATCH:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines and self._file is not None:
            lines, self._lines = self._lines, []
            try:
                self._file.write("".join(lines))
                self._file.flush()
            except OSError:
                pass  # a full disk must not take the data path down; metrics still count

    def close(self) -> None:
        self.flush()
        if self._file is not None and self._file is not sys.stdout:
            self._file.close()
        self._file = None
