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

    # Authorizations with their challenges in one query (a read on every authz, challenge and
    # finalize request: two queries each were ~2 % of the server's CPU per enrollment).
    _AUTHZ_JOIN = ("SELECT a.id, a.account_id, a.identifier_type, a.identifier_value, a.status, "
                   "a.expires, a.wildcard, c.id, c.type, c.token, c.status, c.validated, c.error "
                   "FROM authzs a LEFT JOIN challenges c ON c.authz_id = a.id WHERE {where} "
                   "ORDER BY c.rowid")

    def _authzs_where(self, where: str, params: list[str]) -> dict[str, Authorization]:
        found: dict[str, Authorization] = {}
        for r in self.conn.execute(self._AUTHZ_JOIN.format(where=where), params):
            authz = found.get(r[0])
            if authz is None:
                authz = found[r[0]] = Authorization(
                    id=r[0], account_id=r[1], identifier=Identifier(r[2], r[3]), status=r[4],
                    expires=_dt(r[5]), wildcard=bool(r[6]), challenges=[])  # type: ignore[arg-type]
            if r[7] is not None:
                authz.challenges.append(Challenge(
                    id=r[7], authz_id=r[0], type=r[8], token=r[9], status=r[10],
                    validated=_dt(r[11]), error=json.loads(r[12]) if r[12] else None))
        return found

    def get_authzs(self, authz_ids: list[str]) -> list[Authorization]:
        if not authz_ids:
            return []
        found = self._authzs_where(f"a.id IN ({','.join('?' * len(authz_ids))})", authz_ids)
        return [found[a] for a in authz_ids if a in found]

    def get_authz(self, authz_id: str) -> Authorization | None:
        return self._authzs_where("a.id = ?", [authz_id]).get(authz_id)

    def get_authz_of_challenge(self, challenge_id: str) -> Authorization | None:
        found = self._authzs_where("a.id = (SELECT authz_id FROM challenges WHERE id = ?)",
                                   [challenge_id])
        return next(iter(found.values()), None)

    def find_reusable_authz(self, account_id: str, ident: Identifier, *,
                            valid_after: datetime) -> Authorization | None:
        found = self._authzs_where(
            "a.id = (SELECT id FROM authzs WHERE account_id = ? AND identifier_type = ? AND "
            "identifier_value = ? AND status = ? AND expires > ? ORDER BY expires DESC LIMIT 1)",
            [account_id, ident.type, ident.value, Status.VALID, _ts(valid_after)])
        return next(iter(found.values()), None)

    def accounts_with_valid_authz(self, ident: Identifier, now: datetime) -> set[str]:
        return {r[0] for r in self.conn.execute(
            "SELECT DISTINCT account_id FROM authzs WHERE identifier_type = ? AND "
            "identifier_value = ? AND status = ? AND expires > ?",
            [ident.type, ident.value, Status.VALID, _ts(now)])}

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
