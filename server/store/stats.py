"""Read-only aggregate queries for operators: the expiry watch, the gauges /metrics
computes at scrape time and the dashboard's chart. Cheap COUNTs and GROUP BYs over the
store's connection; kept apart from `repo.py`, which owns every write.

Times are stored as ISO 8601 UTC strings (`+00:00`), which sort as they compare, so a
range is a string comparison and SQLite's julianday() buckets them.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from server.models import NodeStatus, Status
from server.store.repo import Store

# Orders that are still going somewhere: a renewal in sight.
_IN_FLIGHT = (Status.PENDING, Status.READY, Status.PROCESSING)


@dataclass(frozen=True)
class ExpiringNode:
    device_id: str
    node_id: str
    owner: str | None
    serial: str  # the node's newest valid certificate
    not_after: datetime


def _ts(dt: datetime) -> str:
    return dt.isoformat()


def expiry_watch(store: Store, now: datetime, within: timedelta) -> list[ExpiringNode]:
    """Active nodes whose newest valid certificate ends before now + `within` (or has
    ended) with no newer certificate and no renewal order (ARI `replaces`) in flight.
    Soonest first."""
    marks = ",".join("?" * len(_IN_FLIGHT))
    rows = store.conn.execute(
        "SELECT n.device_id, n.node_id, n.owner, c.serial, c.not_after FROM nodes n "
        "JOIN certificates c ON c.serial = (SELECT serial FROM certificates "
        "  WHERE device_id = n.device_id AND status = ? ORDER BY not_after DESC LIMIT 1) "
        "WHERE n.status = ? AND c.not_after <= ? AND NOT EXISTS (SELECT 1 FROM orders o "
        f"  WHERE o.replaces = c.ari_id AND o.status IN ({marks})) "
        "ORDER BY c.not_after, n.node_id",
        (Status.VALID, NodeStatus.ACTIVE, _ts(now + within), *_IN_FLIGHT)).fetchall()
    return [ExpiringNode(r[0], r[1], r[2], r[3], datetime.fromisoformat(r[4])) for r in rows]


def current_expiries(store: Store) -> dict[str, datetime]:
    """device id -> expiry of the node's current certificate, while it is valid."""
    return {r[0]: datetime.fromisoformat(r[1]) for r in store.conn.execute(
        "SELECT n.device_id, c.not_after FROM nodes n JOIN certificates c "
        "ON c.serial = n.current_serial WHERE c.status = ?", (Status.VALID,))}


def certificates_by_status(store: Store, now: datetime) -> dict[str, int]:
    """valid | revoked | expired (valid but past not_after)."""
    return {r[0]: r[1] for r in store.conn.execute(
        "SELECT CASE WHEN status = ? AND not_after <= ? THEN ? ELSE status END AS s, COUNT(*) "
        "FROM certificates GROUP BY s", (Status.VALID, _ts(now), Status.EXPIRED))}


def certificates_expiring(store: Store, now: datetime, within: timedelta) -> int:
    """Valid certificates ending in (now, now + within]."""
    row = store.conn.execute(
        "SELECT COUNT(*) FROM certificates WHERE status = ? AND not_after > ? AND not_after <= ?",
        (Status.VALID, _ts(now), _ts(now + within))).fetchone()
    return int(row[0])


def revocations_by_reason(store: Store) -> dict[int, int]:
    """Revoked certificates by RFC 5280 reason code (None counts as 0, unspecified)."""
    out: dict[int, int] = {}
    for reason, n in store.conn.execute(
            "SELECT COALESCE(revocation_reason, 0), COUNT(*) FROM certificates WHERE status = ? "
            "GROUP BY 1", (Status.REVOKED,)):
        out[int(reason)] = int(n)
    return out


def nodes_by_status(store: Store) -> dict[str, int]:
    return {r[0]: r[1] for r in store.conn.execute(
        "SELECT status, COUNT(*) FROM nodes GROUP BY status")}


def expiry_buckets(store: Store, now: datetime, span: timedelta, step: timedelta) -> list[int]:
    """How many valid certificates end in each `step` of (now, now + span]."""
    n = max(1, int(span / step))
    counts = [0] * n
    for bucket, count in store.conn.execute(
            "SELECT CAST((julianday(not_after) - julianday(?)) * 86400.0 / ? AS INTEGER) AS b, "
            "COUNT(*) FROM certificates WHERE status = ? AND not_after > ? AND not_after <= ? "
            "GROUP BY b", (_ts(now), step.total_seconds(), Status.VALID, _ts(now),
                           _ts(now + span))):
        counts[min(max(int(bucket), 0), n - 1)] += int(count)
    return counts


@dataclass(frozen=True)
class RecentRevocation:
    seq: int
    serial: str
    revoked_at: datetime
    reason: int
    node_id: str | None


def recent_revocations(store: Store, limit: int = 20) -> list[RecentRevocation]:
    """Newest first, with the node the certificate belonged to (if a device's)."""
    return [RecentRevocation(r[0], r[1], datetime.fromisoformat(r[2]), int(r[3] or 0), r[4])
            for r in store.conn.execute(
                "SELECT e.seq, e.serial, e.revoked_at, e.reason, n.node_id "
                "FROM revocation_events e LEFT JOIN certificates c ON c.serial = e.serial "
                "LEFT JOIN nodes n ON n.device_id = c.device_id ORDER BY e.seq DESC LIMIT ?",
                (limit,))]
