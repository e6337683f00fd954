"""Tables and versioned migrations. A migration runs in one transaction with its version
row, so a crash mid-migration leaves the previous version intact."""
from __future__ import annotations

from typing import Callable

import sqlite_utils


def _v1(db: sqlite_utils.Database) -> None:
    db["accounts"].create({
        "id": str, "thumbprint": str, "jwk": str, "status": str, "contact": str,
        "tos_agreed": int, "eab_kid": str, "created_at": str,
    }, pk="id")
    db["accounts"].create_index(["thumbprint"], unique=True)
    db["orders"].create({
        "id": str, "account_id": str, "status": str, "identifiers": str, "authz_ids": str,
        "expires": str, "profile": str, "not_before": str, "not_after": str, "error": str,
        "certificate_serial": str, "replaces": str, "csr_der": bytes, "created_at": str,
    }, pk="id", foreign_keys=[("account_id", "accounts", "id")])
    db["orders"].create_index(["account_id", "created_at"])
    db["orders"].create_index(["status"])
    db["authzs"].create({
        "id": str, "account_id": str, "identifier_type": str, "identifier_value": str,
        "status": str, "expires": str, "wildcard": int, "created_at": str,
    }, pk="id", foreign_keys=[("account_id", "accounts", "id")])
    db["authzs"].create_index(["account_id", "identifier_type", "identifier_value", "status"])
    db["challenges"].create({
        "id": str, "authz_id": str, "type": str, "token": str, "status": str,
        "validated": str, "error": str,
    }, pk="id", foreign_keys=[("authz_id", "authzs", "id")])
    db["challenges"].create_index(["authz_id"])
    db["challenges"].create_index(["status"])
    db["certificates"].create({
        "serial": str, "account_id": str, "order_id": str, "chain_pem": str,
        "not_before": str, "not_after": str, "identifiers": str, "key_fingerprint": str,
        "status": str, "revoked_at": str, "revocation_reason": int, "ari_id": str,
    }, pk="serial")
    db["certificates"].create_index(["key_fingerprint"])
    db["certificates"].create_index(["ari_id"], unique=True)
    db["certificates"].create_index(["account_id"])
    db["eab_keys"].create({
        "kid": str, "hmac_key": bytes, "created_at": str, "account_id": str, "revoked": int,
        "note": str,
    }, pk="kid")


def _v2(db: sqlite_utils.Database) -> None:
    """The revocation feed: one row per revocation, written in the revocation's own
    transaction (Store.revoke_certificate). AUTOINCREMENT so a seq is never reused, even
    after pruning; gateways resume from the last seq they applied. IF NOT EXISTS because
    DDL runs outside the version row's transaction in Python's sqlite3."""
    db.execute("CREATE TABLE IF NOT EXISTS revocation_events ("
               "seq INTEGER PRIMARY KEY AUTOINCREMENT, serial TEXT NOT NULL, "
               "revoked_at TEXT NOT NULL, reason INTEGER, not_after TEXT NOT NULL)")
    # For pruning: rows may go once their certificate has expired, never before.
    db.execute("CREATE INDEX IF NOT EXISTS revocation_events_not_after "
               "ON revocation_events (not_after)")
    # Revocations recorded before the feed existed; in the version row's transaction.
    db.execute("INSERT INTO revocation_events (serial, revoked_at, reason, not_after) "
               "SELECT serial, revoked_at, revocation_reason, not_after FROM certificates "
               "WHERE status = 'revoked' ORDER BY revoked_at, serial")


def _v3(db: sqlite_utils.Database) -> None:
    """Devices (device-attest-01): one node per device, the evidence an authorization was
    won with, the operator's bootstrap deny list, and which device a certificate belongs
    to. Idempotent for the same reason as _v2."""
    db.execute("CREATE TABLE IF NOT EXISTS nodes ("
               "device_id TEXT PRIMARY KEY, node_id TEXT NOT NULL UNIQUE, manufacturer TEXT NOT NULL, "
               "bootstrap_serial TEXT NOT NULL, bootstrap_spki TEXT NOT NULL, dns_name TEXT NOT NULL, "
               "spiffe_id TEXT NOT NULL, status TEXT NOT NULL, account_id TEXT, "
               "pending_account_id TEXT, owner TEXT, labels TEXT NOT NULL DEFAULT '{}', "
               "current_serial TEXT, last_issued_at TEXT, created_at TEXT NOT NULL, "
               "updated_at TEXT NOT NULL)")
    db.execute("CREATE INDEX IF NOT EXISTS nodes_status ON nodes (status)")
    db.execute("CREATE TABLE IF NOT EXISTS authz_evidence ("
               "authz_id TEXT PRIMARY KEY REFERENCES authzs(id), device_id TEXT NOT NULL, "
               "bootstrap_spki TEXT NOT NULL, bootstrap_serial TEXT NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS bootstrap_denylist ("
               "value TEXT PRIMARY KEY, kind TEXT NOT NULL, note TEXT NOT NULL DEFAULT '', "
               "created_at TEXT NOT NULL)")
    cols = {r[1] for r in db.execute("PRAGMA table_info(certificates)").fetchall()}
    if "device_id" not in cols:
        db.execute("ALTER TABLE certificates ADD COLUMN device_id TEXT")
    db.execute("CREATE INDEX IF NOT EXISTS certificates_device ON certificates (device_id)")
    eab_cols = {r[1] for r in db.execute("PRAGMA table_info(eab_keys)").fetchall()}
    for col in ("device_id", "bootstrap_spki", "bootstrap_serial"):
        if col not in eab_cols:
            db.execute(f"ALTER TABLE eab_keys ADD COLUMN {col} TEXT")


def _v4(db: sqlite_utils.Database) -> None:
    """The audit log: append-only, hash-chained (server/store/audit.py). Rows are appended in
    the transaction of the change they record. AUTOINCREMENT so a deleted row's seq is never
    handed out again: a gap is evidence. Idempotent for the same reason as _v2."""
    db.execute("CREATE TABLE IF NOT EXISTS audit_log ("
               "seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, event TEXT NOT NULL, "
               "actor TEXT NOT NULL, subject TEXT NOT NULL, node TEXT, detail TEXT NOT NULL, "
               "prev_hash TEXT NOT NULL, hash TEXT NOT NULL)")
    db.execute("CREATE INDEX IF NOT EXISTS audit_log_node ON audit_log (node, seq)")
    db.execute("CREATE INDEX IF NOT EXISTS audit_log_event ON audit_log (event, seq)")


MIGRATIONS: list[tuple[int, Callable[[sqlite_utils.Database], None]]] = [
    (1, _v1),
    (2, _v2),
    (3, _v3),
    (4, _v4),
]


def migrate(db: sqlite_utils.Database) -> int:
    """Bring the schema up to date; returns the version now in force."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
               "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    applied = {r[0] for r in db.execute("SELECT version FROM schema_migrations").fetchall()}
    for version, step in MIGRATIONS:
        if version in applied:  # every missing step runs, not only those past the newest
            continue
        with db.conn:
            step(db)
            db.execute("INSERT INTO schema_migrations VALUES (?, datetime('now'))", [version])
        applied.add(version)
    return max(applied, default=0)
