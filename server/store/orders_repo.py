"""Orders, authorizations and challenges. Mixed into `server.store.repo.Store`."""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any, Iterable

from server.models import Authorization, AuthzEvidence, Challenge, Identifier, Order, Status
from server.store.rows import _dt, _idents, _idents_json, _ts


class OrdersRepo:
    # Mixin: relies on StoreBase (conn, _tx, _one, _after_commit) and the other repos.
    # -- orders and authorizations ---------------------------------------------------
    @staticmethod
    def _order(row: sqlite3.Row) -> Order:
        return Order(id=row["id"], account_id=row["account_id"], status=row["status"],
                     identifiers=_idents(row["identifiers"]), authz_ids=json.loads(row["authz_ids"]),
                     expires=_dt(row["expires"]),  # type: ignore[arg-type]
                     profile=row["profile"], not_before=_dt(row["not_before"]),
                     not_after=_dt(row["not_after"]),
                     error=json.loads(row["error"]) if row["error"] else None,
                     certificate_serial=row["certificate_serial"], replaces=row["replaces"],
                     csr_der=row["csr_der"], created_at=_dt(row["created_at"]))

    def insert_order(self, order: Order, new_authzs: list[Authorization],
                     evidence: Iterable[AuthzEvidence] = ()) -> None:
        evidence = list(evidence)
        with self._tx() as c:
            for a in new_authzs:
                c.execute("INSERT INTO authzs (id, account_id, identifier_type, identifier_value, "
                          "status, expires, wildcard, created_at) VALUES (?,?,?,?,?,?,?,?)",
                          (a.id, a.account_id, a.identifier.type, a.identifier.value, a.status,
                           _ts(a.expires), int(a.wildcard), _ts(order.created_at)))
                c.executemany("INSERT INTO challenges (id, authz_id, type, token, status, validated) "
                              "VALUES (?,?,?,?,?,?)",
                              [(ch.id, a.id, ch.type, ch.token, ch.status, _ts(ch.validated))
                               for ch in a.challenges])
            c.executemany("INSERT INTO authz_evidence (authz_id, device_id, bootstrap_spki, "
                          "bootstrap_serial) VALUES (?,?,?,?)",
                          [(e.authz_id, e.device_id, e.bootstrap_spki, e.bootstrap_serial)
                           for e in evidence])
            c.execute("INSERT INTO orders (id, account_id, status, identifiers, authz_ids, expires, "
                      "profile, not_before, not_after, replaces, created_at) "
                      "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                      (order.id, order.account_id, order.status, _idents_json(order.identifiers),
                       json.dumps(order.authz_ids), _ts(order.expires), order.profile,
                       _ts(order.not_before), _ts(order.not_after), order.replaces,
                       _ts(order.created_at)))
            self._audit(c, "order.created", f"acme:{order.account_id}", order.id,
                        device_id=evidence[0].device_id if evidence else None,
                        identifiers=[f"{i.type}:{i.value}" for i in order.identifiers],
                        profile=order.profile, replaces=order.replaces)

    def get_order(self, order_id: str) -> Order | None:
        row = self._one("SELECT * FROM orders WHERE id = ?", [order_id])
        return self._order(row) if row else None

    def list_order_ids(self, account_id: str, *, after: str | None, limit: int) -> list[str]:
        """Newest first; `after` is the created_at|id cursor of the last row seen."""
        sql = "SELECT id, created_at FROM orders WHERE account_id = ?"
        params: list[Any] = [account_id]
        if after:
            created, _, oid = after.partition("|")
            sql += " AND (created_at < ? OR (created_at = ? AND id < ?))"
            params += [created, created, oid]
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(limit)
        return [f"{r['created_at']}|{r['id']}" for r in self.conn.execute(sql, params)]

    def set_order_status(self, order_id: str, status: str, *, expect: str | tuple[str, ...],
                         error: dict[str, Any] | None = None, csr_der: bytes | None = None) -> bool:
        """Compare-and-set: only moves an order that is still in (one of) `expect`."""
        expected = (expect,) if isinstance(expect, str) else expect
        marks = ",".join("?" * len(expected))
        with self._tx() as c:
            n = c.execute("UPDATE orders SET status = ?, error = COALESCE(?, error), "
                          f"csr_der = COALESCE(?, csr_der) WHERE id = ? AND status IN ({marks})",
                          (status, json.dumps(error) if error else None, csr_der, order_id,
                           *expected)).rowcount
        return n == 1

    def orders_processing(self) -> list[Order]:
        return [self._order(r) for r in
                self.conn.execute("SELECT * FROM orders WHERE status = ?", [Status.PROCESSING])]

    def _challenges(self, authz_ids: list[str]) -> dict[str, list[Challenge]]:
        marks = ",".join("?" * len(authz_ids))
        out: dict[str, list[Challenge]] = {a: [] for a in authz_ids}
        for r in self.conn.execute(f"SELECT * FROM challenges WHERE authz_id IN ({marks}) "
                                   "ORDER BY rowid", authz_ids):
            out[r["authz_id"]].append(Challenge(
                id=r["id"], authz_id=r["authz_id"], type=r["type"], token=r["token"],
                status=r["status"], validated=_dt(r["validated"]),
                error=json.loads(r["error"]) if r["error"] else None))
        return out

    @staticmethod
    def _authz(row: sqlite3.Row, challenges: list[Challenge]) -> Authorization:
        return Authorization(id=row["id"], account_id=row["account_id"],
                             identifier=Identifier(row["identifier_type"], row["identifier_value"]),
                             status=row["status"], expires=_dt(row["expires"]),  # type: ignore[arg-type]
                             wildcard=bool(row["wildcard"]), challenges=challenges)

    def get_authzs(self, authz_ids: list[str]) -> list[Authorization]:
        if not authz_ids:
            return []
        marks = ",".join("?" * len(authz_ids))
        rows = {r["id"]: r for r in
                self.conn.execute(f"SELECT * FROM authzs WHERE id IN ({marks})", authz_ids)}
        chals = self._challenges(list(rows))
        return [self._authz(rows[a], chals[a]) for a in authz_ids if a in rows]

    def get_authz(self, authz_id: str) -> Authorization | None:
        found = self.get_authzs([authz_id])
        return found[0] if found else None

    def find_reusable_authz(self, account_id: str, ident: Identifier, *,
                            valid_after: datetime) -> Authorization | None:
        row = self._one("SELECT * FROM authzs WHERE account_id = ? AND identifier_type = ? AND "
                        "identifier_value = ? AND status = ? AND expires > ? "
                        "ORDER BY expires DESC LIMIT 1",
                        [account_id, ident.type, ident.value, Status.VALID, _ts(valid_after)])
        return self._authz(row, self._challenges([row["id"]])[row["id"]]) if row else None

    def accounts_with_valid_authz(self, ident: Identifier, now: datetime) -> set[str]:
        return {r[0] for r in self.conn.execute(
            "SELECT DISTINCT account_id FROM authzs WHERE identifier_type = ? AND "
            "identifier_value = ? AND status = ? AND expires > ?",
            [ident.type, ident.value, Status.VALID, _ts(now)])}

    def authz_id_of_challenge(self, challenge_id: str) -> str | None:
        row = self._one("SELECT authz_id FROM challenges WHERE id = ?", [challenge_id])
        return row[0] if row else None

    def start_challenge(self, challenge_id: str) -> bool:
        """pending -> processing, once: a second response to the same challenge is a no-op."""
        with self._tx() as c:
            return c.execute("UPDATE challenges SET status = ? WHERE id = ? AND status = ? AND "
                             "authz_id IN (SELECT id FROM authzs WHERE status = ?)",
                             (Status.PROCESSING, challenge_id, Status.PENDING,
                              Status.PENDING)).rowcount == 1

    def finish_challenge(self, challenge_id: str, authz_id: str, *, valid: bool,
                         when: datetime, error: dict[str, Any] | None) -> None:
        """Record the validation result on the challenge and its authorization together."""
        status = Status.VALID if valid else Status.INVALID
        with self._tx() as c:
            if c.execute("UPDATE challenges SET status = ?, validated = ?, error = ? "
                         "WHERE id = ? AND status = ?",
                         (status, _ts(when) if valid else None,
                          json.dumps(error) if error else None, challenge_id,
                          Status.PROCESSING)).rowcount:
                self._audit_challenge(c, challenge_id, f"challenge.{status}", error=error)
            c.execute("UPDATE authzs SET status = ? WHERE id = ? AND status = ?",
                      (status, authz_id, Status.PENDING))

    def _audit_challenge(self, c: sqlite3.Connection, challenge_id: str, event: str, *,
                         error: dict[str, Any] | None = None, node: str | None = None,
                         **detail: Any) -> None:
        """A challenge result, by the account that answered it; failures with their reason."""
        r = c.execute("SELECT ch.type, a.id, a.account_id, a.identifier_type, a.identifier_value "
                      "FROM challenges ch JOIN authzs a ON a.id = ch.authz_id WHERE ch.id = ?",
                      (challenge_id,)).fetchone()
        if error:
            detail["problem"] = str(error.get("type", "")).rsplit(":", 1)[-1]
            detail["error"] = error.get("detail")
        self._audit(c, event, f"acme:{r[2]}", challenge_id, node=node,
                    device_id=r[4] if r[3] == "permanent-identifier" else None,
                    type=r[0], identifier=f"{r[3]}:{r[4]}", authz=r[1], **detail)

    def challenges_processing(self) -> list[tuple[Challenge, Authorization]]:
        ids = [r[0] for r in self.conn.execute(
            "SELECT authz_id FROM challenges WHERE status = ?", [Status.PROCESSING])]
        out = []
        for authz in self.get_authzs(ids):
            for ch in authz.challenges:
                if ch.status == Status.PROCESSING:
                    out.append((ch, authz))
        return out

    def set_authz_status(self, authz_id: str, status: str, *, expect: str) -> bool:
        with self._tx() as c:
            return c.execute("UPDATE authzs SET status = ? WHERE id = ? AND status = ?",
                             (status, authz_id, expect)).rowcount == 1
