"""The audit log's hash chain: canonical encoding, hashing, verification, the JSON-lines
mirror, and the read queries (as server/store/stats.py: reads here, every write in
repo.py, where each event is appended inside the transaction of its change).

Each row's hash covers its own fields and the previous row's hash, so editing a row breaks
its hash, deleting one leaves a gap in `seq` (AUTOINCREMENT never reuses a number, and
sqlite_sequence remembers the highest, so even a deleted tail shows), and moving one breaks
both. An unkeyed chain cannot stop someone who rewrites every later row too: the mirror
file, kept elsewhere, is the outside copy `verify` compares against.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from server.store.repo import Store

log = logging.getLogger("nodetrust.audit")

GENESIS = "0" * 64  # prev_hash of the first row
# RFC 5280 §5.3.1 CRLReason names, so the log reads without a lookup table.
REASON_NAMES = {0: "unspecified", 1: "keyCompromise", 2: "cACompromise", 3: "affiliationChanged",
                4: "superseded", 5: "cessationOfOperation", 6: "certificateHold",
                8: "removeFromCRL", 9: "privilegeWithdrawn", 10: "aACompromise"}


@dataclass(frozen=True)
class AuditRecord:
    """One row of audit_log, as stored (detail is its canonical JSON text)."""

    seq: int
    at: str
    event: str
    actor: str
    subject: str
    node: str | None
    detail: str
    prev_hash: str
    hash: str

    @property
    def detail_obj(self) -> dict[str, Any]:
        try:
            value = json.loads(self.detail)
        except ValueError:  # an edited row may hold anything; listing must still work
            return {"_raw": self.detail}
        return value if isinstance(value, dict) else {"_value": value}

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "event": self.event, "actor": self.actor,
                "subject": self.subject, "node": self.node, "detail": self.detail_obj,
                "prev_hash": self.prev_hash, "hash": self.hash}


def canonical_detail(detail: Mapping[str, Any] | None) -> str:
    """Sorted keys, no whitespace: the same detail always has the same text."""
    return json.dumps(dict(detail or {}), sort_keys=True, separators=(",", ":"), default=str)


def row_hash(seq: int, at: str, event: str, actor: str, subject: str, node: str | None,
             detail: str, prev_hash: str) -> str:
    """SHA-256 over a JSON array of the fields: JSON escaping makes the encoding
    unambiguous (no field can end early or absorb its neighbour)."""
    encoded = json.dumps([seq, at, event, actor, subject, node, detail, prev_hash],
                         separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode()).hexdigest()


def expected_hash(r: AuditRecord) -> str:
    return row_hash(r.seq, r.at, r.event, r.actor, r.subject, r.node, r.detail, r.prev_hash)


@dataclass(frozen=True)
class ChainProblem:
    seq: int  # the first row the problem shows at
    kind: str  # edited | deleted | chain-break | mirror
    message: str


def _label(r: AuditRecord) -> str:
    return f"row {r.seq} ({r.event} at {r.at})"


def _missing(first: int, last: int) -> str:
    return f"row {first}" if first == last else f"rows {first}-{last}"


def verify(records: Iterable[AuditRecord], high_water: int,
           mirror: Mapping[int, str] | None = None) -> tuple[int, str, list[ChainProblem]]:
    """Walk the chain in seq order; returns (rows checked, head hash, problems in order).
    `high_water` is the highest seq ever assigned (sqlite_sequence); `mirror` maps seq to
    the hash the mirror file recorded."""
    problems: list[ChainProblem] = []
    prev: AuditRecord | None = None
    count = 0
    for r in records:
        count += 1
        last_seq = prev.seq if prev else 0
        gap = r.seq != last_seq + 1
        if gap:
            where = f"between {last_seq} and {r.seq}" if prev else f"before {r.seq}"
            problems.append(ChainProblem(last_seq + 1, "deleted",
                                         f"{_missing(last_seq + 1, r.seq - 1)} missing — "
                                         f"deleted {where}"))
        edited = expected_hash(r) != r.hash
        linked = r.prev_hash == (prev.hash if prev else GENESIS)
        if edited:
            how = "the row was edited" if linked or gap else "the row was edited or moved"
            problems.append(ChainProblem(r.seq, "edited", f"{_label(r)}: hash mismatch — {how}"))
        elif not linked and not gap:
            # The row itself is intact but does not follow its predecessor: the one before
            # was rewritten with a fresh hash, or rows were reordered.
            problems.append(ChainProblem(r.seq, "chain-break", f"{_label(r)}: prev_hash does not "
                                         f"match row {last_seq}'s hash — row {last_seq} was "
                                         "rewritten or rows were reordered"))
        if mirror is not None and r.seq in mirror and mirror[r.seq] != r.hash:
            problems.append(ChainProblem(r.seq, "mirror", f"{_label(r)}: hash differs from the "
                                         "mirror file — the chain was rewritten from here"))
        prev = r
    last_seq = prev.seq if prev else 0
    if high_water > last_seq:
        where = f"deleted after row {last_seq}" if prev else "every row was deleted"
        problems.append(ChainProblem(last_seq + 1, "deleted",
                                     f"{_missing(last_seq + 1, high_water)} missing — {where} "
                                     f"(the log went up to {high_water})"))
    if mirror:
        seen_to = max(mirror)
        if seen_to > max(high_water, last_seq):
            problems.append(ChainProblem(seen_to, "deleted", f"row {seen_to} is in the mirror file "
                                         "but not in the database"))
    problems.sort(key=lambda p: p.seq)
    return count, prev.hash if prev else GENESIS, problems


# -- reading the log -----------------------------------------------------------------------
def _record(r: sqlite3.Row) -> AuditRecord:
    return AuditRecord(seq=r["seq"], at=r["at"], event=r["event"], actor=r["actor"],
                       subject=r["subject"], node=r["node"], detail=r["detail"],
                       prev_hash=r["prev_hash"], hash=r["hash"])


def entries(store: Store, *, node: str | None = None, event: str | None = None,
            limit: int | None = None) -> list[AuditRecord]:
    """The newest `limit` matching events, oldest first. `event` matches exactly or as a
    dotted prefix: "node" finds node.decommissioned and node.readmitted."""
    sql, params = "SELECT * FROM audit_log WHERE 1 = 1", list[Any]()
    if node is not None:
        sql += " AND node = ?"
        params.append(node)
    if event is not None:
        sql += " AND (event = ? OR substr(event, 1, ?) = ?)"
        params += [event, len(event) + 1, event + "."]
    sql += " ORDER BY seq DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [_record(r) for r in store.conn.execute(sql, params)][::-1]


def verify_store(store: Store, mirror: Mapping[int, str] | None = None
                 ) -> tuple[int, str, list[ChainProblem]]:
    """Walk the whole chain in one read snapshot: (rows, head hash, problems)."""
    c = store.conn
    own = not c.in_transaction  # on the writer thread the batch is the snapshot already
    if own:
        c.execute("BEGIN")  # deferred: a snapshot without the write lock; rows and high water agree
    try:
        top = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'").fetchone()
        rows = (_record(r) for r in c.execute("SELECT * FROM audit_log ORDER BY seq"))
        return verify(rows, top[0] if top else 0, mirror)
    finally:
        if own:
            c.execute("COMMIT")


# -- the JSON-lines mirror ------------------------------------------------------------
def append_mirror(path: Path, record: AuditRecord) -> None:
    """One JSON object per line; created 0600. Runs after commit: the database is the
    record, so a failed mirror write is logged, never raised into the change."""
    line = json.dumps(record.to_json(), sort_keys=True, separators=(",", ":")) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())  # one write with O_APPEND: lines never interleave
        finally:
            os.close(fd)
    except OSError as exc:
        log.error("audit mirror %s: row %d not mirrored: %s", path, record.seq, exc)


def read_mirror(path: Path) -> dict[int, str]:
    """seq -> hash from a mirror file; unreadable lines are skipped (a torn last line)."""
    out: dict[int, str] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                obj = json.loads(line)
                out[int(obj["seq"])] = str(obj["hash"])
            except (ValueError, KeyError, TypeError):
                continue
    return out
