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


MIGRATIONS: list[tuple[int, Callable[[sqlite_utils.Database], None]]] = [
    (1, _v1),
    (2, _v2),
]


def migrate(db: sqlite_utils.Database) -> int:
    """Bring the schema up to date; returns the version now in force."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
               "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
    for version, step in MIGRATIONS:
        if version <= current:
            continue
        with db.conn:
            step(db)
            db.execute("INSERT INTO schema_migrations VALUES (?, datetime('now'))", [version])
        current = version
    return int(current)
