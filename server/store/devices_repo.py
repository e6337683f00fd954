"""Devices: nodes, attestation evidence, the bootstrap deny list. Mixed into `server.store.repo.Store`."""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime

from server.models import AuthzEvidence, Certificate, Node, NodeStatus, Status
from server.store.rows import _dt, _ts


class DevicesRepo:
    # Mixin: relies on StoreBase (conn, _tx, _one, _after_commit) and the other repos.
    # -- devices (device-attest-01) ----------------------------------------------------
    @staticmethod
    def _node(r: sqlite3.Row) -> Node:
        return Node(device_id=r["device_id"], node_id=r["node_id"], manufacturer=r["manufacturer"],
                    bootstrap_serial=r["bootstrap_serial"], bootstrap_spki=r["bootstrap_spki"],
                    dns_name=r["dns_name"], spiffe_id=r["spiffe_id"], status=r["status"],
                    created_at=_dt(r["created_at"]),  # type: ignore[arg-type]
                    updated_at=_dt(r["updated_at"]),  # type: ignore[arg-type]
                    account_id=r["account_id"], pending_account_id=r["pending_account_id"],
                    owner=r["owner"], labels=json.loads(r["labels"] or "{}"),
                    current_serial=r["current_serial"], last_issued_at=_dt(r["last_issued_at"]))

    def get_node(self, device_id: str) -> Node | None:
        row = self._one("SELECT * FROM nodes WHERE device_id = ?", [device_id])
        return self._node(row) if row else None

    def find_node(self, ref: str) -> Node | None:
        """A node by device id, node id or DNS name (what an operator types)."""
        row = self._one("SELECT * FROM nodes WHERE device_id = ? OR node_id = ? OR dns_name = ? "
                        "LIMIT 1", [ref, ref.lower(), ref.lower()])
        return self._node(row) if row else None

    def list_nodes(self) -> list[Node]:
        return [self._node(r) for r in self.conn.execute("SELECT * FROM nodes ORDER BY node_id")]

    def record_attestation(self, node: Node, evidence: AuthzEvidence, challenge_id: str, *,
                           when: datetime, approved: bool) -> None:
        """The node (new or updated) and the evidence, with the challenge result: valid now,
        or left processing until an operator approves the rejoin."""
        with self._tx() as c:
            self._upsert_node(c, node)
            c.execute("INSERT OR REPLACE INTO authz_evidence (authz_id, device_id, bootstrap_spki, "
                      "bootstrap_serial) VALUES (?,?,?,?)",
                      (evidence.authz_id, evidence.device_id, evidence.bootstrap_spki,
                       evidence.bootstrap_serial))
            if approved:
                c.execute("UPDATE challenges SET status = ?, validated = ? WHERE id = ? AND status = ?",
                          (Status.VALID, _ts(when), challenge_id, Status.PROCESSING))
                c.execute("UPDATE authzs SET status = ? WHERE id = ? AND status = ?",
                          (Status.VALID, evidence.authz_id, Status.PENDING))
            self._audit_challenge(c, challenge_id, "challenge.valid" if approved
                                  else "challenge.awaiting_approval", node=node.node_id,
                                  device=node.device_id, manufacturer=node.manufacturer,
                                  bootstrap_serial=node.bootstrap_serial)

    @staticmethod
    def _upsert_node(c: sqlite3.Connection, node: Node) -> None:
        c.execute("INSERT INTO nodes (device_id, node_id, manufacturer, bootstrap_serial, "
                  "bootstrap_spki, dns_name, spiffe_id, status, account_id, pending_account_id, "
                  "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                  "ON CONFLICT(device_id) DO UPDATE SET manufacturer = excluded.manufacturer, "
                  "bootstrap_serial = excluded.bootstrap_serial, "
                  "bootstrap_spki = excluded.bootstrap_spki, dns_name = excluded.dns_name, "
                  "spiffe_id = excluded.spiffe_id, "
                  "pending_account_id = excluded.pending_account_id, "
                  "updated_at = excluded.updated_at",
                  (node.device_id, node.node_id, node.manufacturer, node.bootstrap_serial,
                   node.bootstrap_spki, node.dns_name, node.spiffe_id, node.status,
                   node.account_id, node.pending_account_id, _ts(node.created_at),
                   _ts(node.updated_at)))

    def evidence_for(self, authz_ids: list[str]) -> list[AuthzEvidence]:
        if not authz_ids:
            return []
        marks = ",".join("?" * len(authz_ids))
        return [AuthzEvidence(r["authz_id"], r["device_id"], r["bootstrap_spki"], r["bootstrap_serial"])
                for r in self.conn.execute(f"SELECT * FROM authz_evidence WHERE authz_id IN ({marks})",
                                           authz_ids)]

    def approve_rejoin(self, device_id: str, when: datetime, *, actor: str = "server") -> int:
        """Validate the challenges waiting on this device's rejoin; returns how many."""
        with self._tx() as c:
            node = c.execute("SELECT pending_account_id FROM nodes WHERE device_id = ?",
                             (device_id,)).fetchone()
            if node is None or node[0] is None:
                return 0
            rows = c.execute("SELECT ch.id, ch.authz_id FROM challenges ch "
                             "JOIN authz_evidence e ON e.authz_id = ch.authz_id "
                             "JOIN authzs a ON a.id = ch.authz_id "
                             "WHERE e.device_id = ? AND a.account_id = ? AND ch.status = ?",
                             (device_id, node[0], Status.PROCESSING)).fetchall()
            for ch_id, authz_id in rows:
                c.execute("UPDATE challenges SET status = ?, validated = ? WHERE id = ?",
                          (Status.VALID, _ts(when), ch_id))
                c.execute("UPDATE authzs SET status = ? WHERE id = ? AND status = ?",
                          (Status.VALID, authz_id, Status.PENDING))
            if rows:
                self._audit(c, "node.rejoin_approved", actor, device_id, device_id=device_id,
                            account=node[0], authorizations=len(rows))
            return len(rows)

    def set_node_status(self, device_id: str, status: str, when: datetime, *,
                        actor: str = "server") -> bool:
        with self._tx() as c:
            old = c.execute("SELECT status FROM nodes WHERE device_id = ?", (device_id,)).fetchone()
            done = c.execute("UPDATE nodes SET status = ?, pending_account_id = NULL, "
                             "updated_at = ? WHERE device_id = ?",
                             (status, _ts(when), device_id)).rowcount == 1
            if done:
                event = ("node.decommissioned" if status == NodeStatus.DECOMMISSIONED else
                         "node.readmitted" if old[0] == NodeStatus.DECOMMISSIONED else
                         "node.status_changed")
                self._audit(c, event, actor, device_id, device_id=device_id,
                            previous=old[0], status=status)
            return done

    def valid_certificates_of_device(self, device_id: str) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT serial FROM certificates WHERE device_id = ? AND status = ?",
            [device_id, Status.VALID])]

    def set_node_owner(self, device_id: str, owner: str | None, when: datetime, *,
                       actor: str = "server") -> bool:
        with self._tx() as c:
            done = c.execute("UPDATE nodes SET owner = ?, updated_at = ? WHERE device_id = ?",
                             (owner, _ts(when), device_id)).rowcount == 1
            if done:
                self._audit(c, "node.owner_set", actor, device_id, device_id=device_id, owner=owner)
            return done

    def set_node_labels(self, device_id: str, labels: dict[str, str], when: datetime, *,
                        actor: str = "server") -> bool:
        """Labels feed gateway groups, so a change is access control: audited."""
        with self._tx() as c:
            done = c.execute("UPDATE nodes SET labels = ?, updated_at = ? WHERE device_id = ?",
                             (json.dumps(labels, sort_keys=True), _ts(when), device_id)).rowcount == 1
            if done:
                self._audit(c, "node.labels_set", actor, device_id, device_id=device_id,
                            labels=labels)
            return done

    def certificates_of_device(self, device_id: str) -> list[Certificate]:
        return [self._cert(r) for r in self.conn.execute(
            "SELECT * FROM certificates WHERE device_id = ? ORDER BY not_before DESC", [device_id])]

    def labels_version(self) -> str:
        """Changes whenever any node's labels (or nodes) change: gateways re-fetch then."""
        row = self._one("SELECT COUNT(*), COALESCE(MAX(updated_at), '') FROM nodes")
        return f"{row[0]}:{row[1]}" if row else "0:"

    def node_labels(self) -> dict[str, list[str]]:
        """node id -> ["key=value", ...] for active nodes with labels (gateway route groups)."""
        out: dict[str, list[str]] = {}
        for r in self.conn.execute("SELECT node_id, labels FROM nodes WHERE status = ? AND "
                                   "labels != '{}'", [NodeStatus.ACTIVE]):
            out[r[0]] = sorted(f"{k}={v}" for k, v in json.loads(r[1]).items())
        return out

    def deny_bootstrap(self, value: str, kind: str, note: str, when: datetime, *,
                       actor: str = "server") -> bool:
        with self._tx() as c:
            done = c.execute("INSERT OR IGNORE INTO bootstrap_denylist (value, kind, note, "
                             "created_at) VALUES (?,?,?,?)",
                             (value, kind, note, _ts(when))).rowcount == 1
            if done:
                self._audit(c, "bootstrap.denied", actor, value,
                            device_id=value if kind == "device" else None, kind=kind,
                            note=note or None)
            return done

    def allow_bootstrap(self, value: str, *, actor: str = "server") -> bool:
        with self._tx() as c:
            kind = c.execute("SELECT kind FROM bootstrap_denylist WHERE value = ?",
                             (value,)).fetchone()
            done = c.execute("DELETE FROM bootstrap_denylist WHERE value = ?",
                             (value,)).rowcount == 1
            if done:
                self._audit(c, "bootstrap.allowed", actor, value,
                            device_id=value if kind and kind[0] == "device" else None)
            return done

    def denied_bootstrap(self, *values: str) -> str | None:
        """The first of `values` (device id, bootstrap serial) on the deny list."""
        marks = ",".join("?" * len(values))
        row = self._one(f"SELECT value FROM bootstrap_denylist WHERE value IN ({marks}) LIMIT 1",
                        list(values))
        return row[0] if row else None

    def list_denied_bootstrap(self) -> list[dict[str, str]]:
        return [dict(r) for r in self.conn.execute(
            "SELECT value, kind, note, created_at FROM bootstrap_denylist ORDER BY created_at")]
