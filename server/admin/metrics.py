"""GET /metrics: Prometheus text exposition (format 0.0.4) on the admin listener.

Authentication: the admin bearer token, like the rest of the listener (Prometheus:
`authorization: {type: Bearer, credentials_file: <data-dir>/admin.token}` with the
server's root as `tls_config.ca_file`). Counts of nodes and certificates would tell an
outsider the size and churn of the fleet, so they are not public.

Two kinds of series:
- gauges computed from the store at scrape time (cheap COUNT queries), so they agree with
  the store whichever process (server, local CLI) made the change;
- counters and histograms from this process's hooks (`server.telemetry`), reset on restart
  as Prometheus counters may be.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Iterable

from aiohttp import web

from server.admin.app import ADMIN, AdminContext
from server.models import NodeStatus, Status
from server.ra.revocation import ALLOWED_REASONS
from server.store import stats
from server.telemetry import Counter, Histogram, Labels

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EXPIRING_WINDOWS = (("1h", timedelta(hours=1)), ("24h", timedelta(hours=24)),
                    ("7d", timedelta(days=7)))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[Labels, float]]) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self.lines += [f"{name}{_labels(labels)} {_num(v)}" for labels, v in samples]

    def gauge(self, name: str, help_text: str, samples: Iterable[tuple[Labels, float]]) -> None:
        self.family(name, "gauge", help_text, samples)

    def counter(self, c: Counter) -> None:
        self.family(c.name, "counter", c.help, sorted(c.values.items()))

    def histogram(self, h: Histogram) -> None:
        self.lines += [f"# HELP {h.name} {h.help}", f"# TYPE {h.name} histogram"]
        self.lines += [f'{h.name}_bucket{{le="{le}"}} {n}' for le, n in h.cumulative()]
        self.lines += [f"{h.name}_sum {_num(h.sum)}", f"{h.name}_count {h.count}"]

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(ctx: AdminContext) -> str:
    store, now, out = ctx.store, ctx.now(), Exposition()
    by_status = stats.certificates_by_status(store, now)
    out.gauge("nodetrust_certificates", "Certificates in the store by status (expired: valid "
              "but past notAfter)",
              [((("status", s),), by_status.get(s, 0))
               for s in (Status.VALID, Status.REVOKED, Status.EXPIRED)])
    out.gauge("nodetrust_certificates_expiring", "Valid certificates ending within the window",
              [((("within", name),), stats.certificates_expiring(store, now, span))
               for name, span in EXPIRING_WINDOWS])
    revoked = stats.revocations_by_reason(store)
    out.gauge("nodetrust_revoked_certificates", "Revoked certificates in the store by reason",
              [((("reason", ALLOWED_REASONS.get(code, str(code))),), n)
               for code, n in sorted(revoked.items())])
    nodes = stats.nodes_by_status(store)
    out.gauge("nodetrust_nodes", "Enrolled devices by status",
              [((("status", s),), nodes.get(s, 0))
               for s in (NodeStatus.PENDING, NodeStatus.ACTIVE, NodeStatus.DECOMMISSIONED)])
    window = ctx.cfg.admin.expiry_warning
    watch = stats.expiry_watch(store, now, window)
    out.gauge("nodetrust_expiry_watch_nodes", "Active nodes whose certificate ends within "
              "[admin] expiry_warning with no newer certificate or renewal order in flight",
              [((("window", _duration(window)),), len(watch))])
    out.gauge("nodetrust_expiry_watch_seconds_left", "Seconds until the certificate of each "
              "node on the expiry watch ends (negative: already expired)",
              [((("node", e.node_id), ("owner", e.owner or "")),
                int((e.not_after - now).total_seconds())) for e in watch])
    out.gauge("nodetrust_feed_subscribers", "Revocation feed long-polls parked right now",
              [((), ctx.feed.waiting)])
    out.gauge("nodetrust_feed_head_seq", "Newest revocation feed event sequence number",
              [((), store.revocation_head())])
    out.gauge("nodetrust_feed_lag_events", "Events the slowest recent feed subscriber has "
              "not fetched yet", [((), ctx.feed.lag())])
    writes, commits = store.commit_stats()
    out.family("nodetrust_store_writes_total", "counter", "Writes made durable by the store's "
               "group-commit writer", [((), writes)])
    out.family("nodetrust_store_commits_total", "counter", "Transactions (each one fsync) "
               "that carried those writes", [((), commits)])
    for c in ctx.telemetry.counters():
        out.counter(c)
    for h in ctx.telemetry.histograms():
        out.histogram(h)
    return out.text()


def _duration(td: timedelta) -> str:
    seconds = int(td.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[ADMIN]
    ctx.auth.bearer(request)
    return web.Response(body=render(ctx).encode(), headers={"Content-Type": CONTENT_TYPE})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
