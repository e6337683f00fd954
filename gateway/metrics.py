"""Prometheus metrics and /healthz on a separate listener (aiohttp: off the data path).

Counters live in a shared array of doubles with one block per worker process, so the data path
updates its own slots without locks or messages, and the metrics listener (in the parent when
there are several workers) sums the blocks at scrape time. Gauges (feed lag, freshness,
connections) are written by each worker's housekeeping tick.
"""

from __future__ import annotations

import bisect
import mmap
import os
import tempfile
import time
from pathlib import Path

from aiohttp import web

__all__ = ["Metrics", "SharedBlock", "create_metrics_app"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REASONS = ("policy", "no_route", "revoked", "expired", "stale")
UPSTREAM_ERRORS = ("connect", "timeout", "reset")
CLIENT_STALLS = ("head", "body")  # requests cut by client_header_timeout / client_body_timeout

# Slot layout of one worker's block.
_NAMES = (["heartbeat", "fresh", "feed_lag", "feed_age", "connections", "allowed", "refused",
           "reload_ok", "reload_error", "lat_sum", "lat_count", "tls_full", "tls_resumed"]
          + [f"reason_{r}" for r in REASONS] + [f"upstream_{e}" for e in UPSTREAM_ERRORS]
          + [f"stalled_{p}" for p in CLIENT_STALLS]
          + [f"lat_{i}" for i in range(len(LATENCY_BUCKETS) + 1)])
_SLOT = {name: i for i, name in enumerate(_NAMES)}
BLOCK = len(_NAMES)
HEARTBEAT_MAX_AGE = 5.0


class SharedBlock:
    """The array all workers write to: a file in /dev/shm (or anonymous memory for one process)."""

    def __init__(self, workers: int, path: Path | None = None, *, create: bool = True) -> None:
        size = workers * BLOCK * 8
        self.workers, self.path = workers, path
        if path is None:
            self._mm = mmap.mmap(-1, size)
        else:
            if create:
                path.write_bytes(b"\0" * size)
            with open(path, "r+b") as f:
                self._mm = mmap.mmap(f.fileno(), size)
        self.array = memoryview(self._mm).cast("d")

    @classmethod
    def create_file(cls, workers: int) -> SharedBlock:
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, name = tempfile.mkstemp(prefix="nodetrust-gateway-", suffix=".metrics", dir=shm)
        os.close(fd)
        return cls(workers, Path(name))

    def close(self, *, unlink: bool = False) -> None:
        self.array.release()
        self._mm.close()
        if unlink and self.path is not None:
            self.path.unlink(missing_ok=True)

    def total(self, name: str) -> float:
        i = _SLOT[name]
        return sum(self.array[w * BLOCK + i] for w in range(self.workers))

    def values(self, name: str) -> list[float]:
        i = _SLOT[name]
        return [self.array[w * BLOCK + i] for w in range(self.workers)]


class Metrics:
    """One worker's writer. Methods are tiny on purpose: they run per request."""

    def __init__(self, block: SharedBlock, worker: int = 0) -> None:
        self._a = block.array
        self._base = worker * BLOCK
        b = self._base
        self._allowed, self._refused = b + _SLOT["allowed"], b + _SLOT["refused"]
        self._reason = {r: b + _SLOT[f"reason_{r}"] for r in REASONS}
        self._upstream = {e: b + _SLOT[f"upstream_{e}"] for e in UPSTREAM_ERRORS}
        self._lat0, self._lat_sum, self._lat_count = b + _SLOT["lat_0"], b + _SLOT["lat_sum"], \
            b + _SLOT["lat_count"]

    def allowed(self) -> None:
        self._a[self._allowed] += 1.0

    def refused(self, reason: str) -> None:
        self._a[self._refused] += 1.0
        self._a[self._reason[reason]] += 1.0

    def handshake(self, resumed: bool) -> None:
        self._a[self._base + (_SLOT["tls_resumed"] if resumed else _SLOT["tls_full"])] += 1.0

    def upstream_error(self, kind: str) -> None:
        self._a[self._upstream[kind]] += 1.0

    def client_stalled(self, phase: str) -> None:
        self._a[self._base + _SLOT[f"stalled_{phase}"]] += 1.0

    def latency(self, seconds: float) -> None:
        a = self._a
        a[self._lat0 + bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1.0
        a[self._lat_sum] += seconds
        a[self._lat_count] += 1.0

    def set(self, name: str, value: float) -> None:
        self._a[self._base + _SLOT[name]] = value

    def add(self, name: str, value: float = 1.0) -> None:
        self._a[self._base + _SLOT[name]] += value


def _num(value: float) -> str:
    """Prometheus text format spells infinity +Inf."""
    return "+Inf" if value == float("inf") else repr(value)


def render(block: SharedBlock) -> str:
    t = block.total
    out = [
        "# HELP nodetrust_gateway_requests_total Requests by decision.",
        "# TYPE nodetrust_gateway_requests_total counter",
        f'nodetrust_gateway_requests_total{{decision="allow"}} {t("allowed"):.0f}',
        f'nodetrust_gateway_requests_total{{decision="refuse"}} {t("refused"):.0f}',
        "# HELP nodetrust_gateway_refusals_total Refused requests by reason.",
        "# TYPE nodetrust_gateway_refusals_total counter",
        *(f'nodetrust_gateway_refusals_total{{reason="{r}"}} {t(f"reason_{r}"):.0f}'
          for r in REASONS),
        "# HELP nodetrust_gateway_upstream_errors_total Upstream failures (502/504) by kind.",
        "# TYPE nodetrust_gateway_upstream_errors_total counter",
        *(f'nodetrust_gateway_upstream_errors_total{{kind="{e}"}} {t(f"upstream_{e}"):.0f}'
          for e in UPSTREAM_ERRORS),
        ("# HELP nodetrust_gateway_client_timeouts_total Requests cut off because the client "
         "stopped sending its head or body (408)."),
        "# TYPE nodetrust_gateway_client_timeouts_total counter",
        *(f'nodetrust_gateway_client_timeouts_total{{phase="{p}"}} {t(f"stalled_{p}"):.0f}'
          for p in CLIENT_STALLS),
        "# HELP nodetrust_gateway_upstream_latency_seconds Time to the upstream response head.",
        "# TYPE nodetrust_gateway_upstream_latency_seconds histogram",
    ]
    cumulative = 0.0
    for i, le in enumerate((*LATENCY_BUCKETS, float("inf"))):
        cumulative += t(f"lat_{i}")
        label = "+Inf" if le == float("inf") else repr(le)
        out.append(f'nodetrust_gateway_upstream_latency_seconds_bucket{{le="{label}"}} '
                   f"{cumulative:.0f}")
    out += [
        f"nodetrust_gateway_upstream_latency_seconds_sum {_num(t('lat_sum'))}",
        f"nodetrust_gateway_upstream_latency_seconds_count {t('lat_count'):.0f}",
        ("# HELP nodetrust_gateway_feed_lag_seconds From a revocation being recorded to this "
         "gateway applying it (newest event, worst worker)."),
        "# TYPE nodetrust_gateway_feed_lag_seconds gauge",
        f"nodetrust_gateway_feed_lag_seconds {_num(max(block.values('feed_lag')))}",
        ("# HELP nodetrust_gateway_feed_age_seconds Since the revocation feed last answered "
         "(worst worker); above max_staleness every request gets 503."),
        "# TYPE nodetrust_gateway_feed_age_seconds gauge",
        f"nodetrust_gateway_feed_age_seconds {_num(max(block.values('feed_age')))}",
        "# HELP nodetrust_gateway_revocation_fresh 1 if every worker's revocation state is fresh.",
        "# TYPE nodetrust_gateway_revocation_fresh gauge",
        f"nodetrust_gateway_revocation_fresh {min(block.values('fresh')):.0f}",
        "# HELP nodetrust_gateway_connections Open client connections.",
        "# TYPE nodetrust_gateway_connections gauge",
        f"nodetrust_gateway_connections {t('connections'):.0f}",
        ("# HELP nodetrust_gateway_tls_handshakes_total Client TLS handshakes completed, full or "
         "resumed (session ticket); either way every request is checked."),
        "# TYPE nodetrust_gateway_tls_handshakes_total counter",
        f'nodetrust_gateway_tls_handshakes_total{{resumed="false"}} {t("tls_full"):.0f}',
        f'nodetrust_gateway_tls_handshakes_total{{resumed="true"}} {t("tls_resumed"):.0f}',
        "# HELP nodetrust_gateway_policy_reloads_total Policy reloads by result.",
        "# TYPE nodetrust_gateway_policy_reloads_total counter",
        f'nodetrust_gateway_policy_reloads_total{{result="ok"}} {t("reload_ok"):.0f}',
        f'nodetrust_gateway_policy_reloads_total{{result="error"}} {t("reload_error"):.0f}',
    ]
    return "\n".join(out) + "\n"


def health(block: SharedBlock, now: float) -> tuple[bool, dict[str, object]]:
    beats = block.values("heartbeat")
    alive = sum(1 for b in beats if now - b <= HEARTBEAT_MAX_AGE)
    fresh = sum(1 for f in block.values("fresh") if f >= 1.0)
    ok = alive == block.workers and fresh == block.workers
    return ok, {"status": "ok" if ok else "unhealthy", "workers": block.workers,
                "workers_alive": alive, "revocation_fresh": fresh,
                "feed_lag_seconds": max(block.values("feed_lag")),
                "feed_age_seconds": _json_num(max(block.values("feed_age")))}


def _json_num(value: float) -> float | None:
    return None if value == float("inf") else round(value, 3)


def create_metrics_app(block: SharedBlock) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=render(block).encode(), headers={
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def healthz(_: web.Request) -> web.Response:
        ok, body = health(block, time.time())
        return web.json_response(body, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app
