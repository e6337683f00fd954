"""Appending to the hash-chained audit log (server/store/audit.py reads and verifies it). Mixed into `server.store.repo.Store`."""
from __future__ import annotations

import sqlite3
from typing import Any, Mapping

from server.store import audit as chain
from server.store.audit import AuditRecord
from server.store.rows import _log_unwritten_audit


class AuditRepo:
    # Mixin: relies on StoreBase (conn, _tx, _one, _after_commit) and the other repos.
    # -- audit log (hash chain: server/store/audit.py) ----------------------------------
    def _audit(self, c: sqlite3.Connection, event: str, actor: str, subject: str, *,
               node: str | None = None, device_id: str | None = None, **detail: Any) -> int:
        """Append one event inside the caller's transaction, so it commits with the change it
        records or not at all. `device_id` names the node when `node` is not given."""
        if node is None and device_id is not None:
            row = c.execute("SELECT node_id FROM nodes WHERE device_id = ?",
                            (device_id,)).fetchone()
            node = row[0] if row else None
        return self._append_audit(c, event, actor, subject, node,
                                  {k: v for k, v in detail.items() if v is not None})

    def _append_audit(self, c: sqlite3.Connection, event: str, actor: str, subject: str,
                      node: str | None, detail: Mapping[str, Any]) -> int:
        # The head is read under the write lock (BEGIN IMMEDIATE, or the writer's batch), so
        # two writers (server, CLI) can never chain onto the same row. The next seq comes
        # from sqlite_sequence too: after a deleted tail the gap stays visible.
        head = c.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        top = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'").fetchone()
        seq = max(head[0] if head else 0, top[0] if top else 0) + 1
        at = self.clock().isoformat(timespec="microseconds")
        text = chain.canonical_detail(detail)
        prev = head[1] if head else chain.GENESIS
        rec = AuditRecord(seq, at, event, actor, subject, node, text, prev,
                          chain.row_hash(seq, at, event, actor, subject, node, text, prev))
        c.execute("INSERT INTO audit_log (seq, at, event, actor, subject, node, detail, prev_hash, "
                  "hash) VALUES (?,?,?,?,?,?,?,?,?)",
                  (rec.seq, rec.at, rec.event, rec.actor, rec.subject, rec.node, rec.detail,
                   rec.prev_hash, rec.hash))
        mirror = self.audit_mirror
        if mirror is not None:
            self._after_commit(lambda: chain.append_mirror(mirror, rec))
        return seq

    def audit(self, event: str, actor: str, subject: str = "",
              detail: Mapping[str, Any] | None = None, *, node: str | None = None) -> int:
        """A standalone event with no store change of its own (admin login, policy reload);
        returns its seq. In the server: `await store.write(store.audit, "admin.login",
        "admin:alice", "alice", {"from": ip})`."""
        with self._tx() as c:
            return self._append_audit(c, event, actor, subject, node, detail or {})

    def audit_nowait(self, event: str, actor: str, subject: str = "",
                     detail: Mapping[str, Any] | None = None, *, node: str | None = None) -> None:
        """`audit` from synchronous code on the event loop (a SIGHUP handler): queued on the
        writer thread instead of waiting for the write lock on the loop."""
        if self._writer is None:
            self.audit(event, actor, subject, detail, node=node)
            return
        fut = self._writer.post(self.audit, (event, actor, subject, detail), {"node": node})
        fut.add_done_callback(_log_unwritten_audit)
