"""The store: typed methods in, models out. The only module that writes SQL.

One SQLite file in WAL mode. Every state change is one transaction, so a crash (kill -9)
at any point leaves each object either before or after the change, never half-written.
With `synchronous=full` (the default) a commit is on disk before the caller answers.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, ParamSpec, TypeVar

import sqlite_utils

from server.models import (Account, Authorization, AuthzEvidence, Certificate, Challenge,
                           EabKey, Identifier, Node, NodeStatus, Order, Status)
from server.store import audit as chain
from server.store.audit import AuditRecord
from server.store.schema import migrate
from server.store.writer import GroupCommitWriter

P = ParamSpec("P")
T = TypeVar("T")


def _ts(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt is not None else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _idents(raw: str) -> list[Identifier]:
    return [Identifier(i["type"], i["value"]) for i in json.loads(raw)]


def _idents_json(idents: Iterable[Identifier]) -> str:
    return json.dumps([i.to_json() for i in idents])


class Store:
    def __init__(self, path: Path, *, synchronous: str = "full",
                 audit_mirror: Path | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path, self._synchronous = path, synchronous
        self.audit_mirror = audit_mirror  # JSON-lines copy of the audit log, appended after commit
        self.clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)  # audit `at`
        self._main_conn = self._connect()
        self._local = threading.local()
        self._writer: GroupCommitWriter | None = None
        self.db = sqlite_utils.Database(self._main_conn)
        self.db.enable_wal()
        self.schema_version = self._migrate()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are opened explicitly, so one `with self._tx()`
        # is exactly one commit (or one savepoint inside a group-commit batch).
        conn = sqlite3.connect(str(self._path), isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self._synchronous == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """The writer thread's connection inside a batch, the main one everywhere else."""
        return getattr(self._local, "conn", None) or self._main_conn

    def _bind(self, conn: sqlite3.Connection | None,
              after_commit: list[Callable[[], None]] | None) -> None:
        self._local.conn = conn
        self._local.after_commit = after_commit

    def _after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the current write is durable (on the event loop when batched)."""
        pending = getattr(self._local, "after_commit", None)
        if pending is None:
            callback()
        else:
            pending.append(callback)

    def start_writer(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on `write()` goes through the group-commit writer thread."""
        if self._writer is None:
            self._writer = GroupCommitWriter(self._connect, self._bind, loop)

    async def write(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one of this store's write methods durably without blocking the event loop."""
        if self._writer is None:
            return fn(*args, **kwargs)
        result: T = await self._writer.submit(fn, args, kwargs)
        return result

    def _migrate(self) -> int:
        self._main_conn.isolation_level = ""  # sqlite-utils DDL inside `with conn:` transactions
        try:
            return migrate(self.db)
        finally:
            self._main_conn.isolation_level = None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._main_conn.close()

    class _Tx:
        """A transaction (BEGIN IMMEDIATE: the write lock up front, so what is read inside,
        like the audit chain's head, stays current until commit), or a savepoint inside one.
        Post-commit callbacks queued inside are dropped if it rolls back; outside a writer
        batch the outermost one runs them after COMMIT (the batch runs its own)."""

        def __init__(self, store: Store) -> None:
            self.store, self.conn = store, store.conn
            self.nested = self.conn.in_transaction

        def __enter__(self) -> sqlite3.Connection:
            local = self.store._local
            self.own = not self.nested and getattr(local, "after_commit", None) is None
            if self.own:
                local.after_commit = []
            self.pending: list[Callable[[], None]] | None = getattr(local, "after_commit", None)
            self.mark = len(self.pending) if self.pending is not None else 0
            try:
                self.conn.execute("SAVEPOINT tx" if self.nested else "BEGIN IMMEDIATE")
            except BaseException:
                self._release()
                raise
            return self.conn

        def __exit__(self, exc_type: Any, *_: Any) -> None:
            try:
                if not self.nested:
                    self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
                elif exc_type:
                    self.conn.execute("ROLLBACK TO tx")
                    self.conn.execute("RELEASE tx")
                else:
                    self.conn.execute("RELEASE tx")
            finally:
                if exc_type and self.pending is not None:
                    del self.pending[self.mark:]
                callbacks = self._release()
            for callback in callbacks:
                callback()

        def _release(self) -> list[Callable[[], None]]:
            if not self.own:
                return []
            self.store._local.after_commit = None
            return self.pending or []

    def _tx(self) -> Store._Tx:
        return Store._Tx(self)

    def _one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, tuple(params)).fetchone()
        return row

    # -- accounts -----------------------------------------------------------------
    @staticmethod
    def _account(row: sqlite3.Row) -> Account:
        return Account(id=row["id"], thumbprint=row["thumbprint"], jwk=json.loads(row["jwk"]),
                       status=row["status"], contact=json.loads(row["contact"]),
                       created_at=_dt(row["created_at"]),  # type: ignore[arg-type]
                       tos_agreed=bool(row["tos_agreed"]), eab_kid=row["eab_kid"])

    def get_account(self, account_id: str) -> Account | None:
        row = self._one("SELECT * FROM accounts WHERE id = ?", [account_id])
        return self._account(row) if row else None

    def get_account_by_thumbprint(self, thumbprint: str) -> Account | None:
        row = self._one("SELECT * FROM accounts WHERE thumbprint = ?", [thumbprint])
        return self._account(row) if row else None

    def insert_account(self, acct: Account) -> bool:
        """False when the key already has an account (a concurrent newAccount won) or the
        EAB key was already bound."""
        try:
            with self._tx() as c:
                if acct.eab_kid is not None:
                    bound = c.execute("UPDATE eab_keys SET account_id = ? WHERE kid = ? "
                                      "AND account_id IS NULL AND revoked = 0",
                                      (acct.id, acct.eab_kid)).rowcount
                    if bound != 1:
                        raise _Conflict()
                c.execute("INSERT INTO accounts (id, thumbprint, jwk, status, contact, tos_agreed, "
                          "eab_kid, created_at) VALUES (?,?,?,?,?,?,?,?)",
                          (acct.id, acct.thumbprint, json.dumps(acct.jwk), acct.status,
                           json.dumps(acct.contact), int(acct.tos_agreed), acct.eab_kid,
                           _ts(acct.created_at)))
                self._audit(c, "account.created", f"acme:{acct.id}", acct.id,
                            key=acct.thumbprint, contact=acct.contact or None,
                            eab_kid=acct.eab_kid, tos_agreed=acct.tos_agreed)
        except (_Conflict, sqlite3.IntegrityError):
            return False
        return True

    def update_account(self, account_id: str, *, contact: list[str] | None = None,
                       status: str | None = None) -> None:
        with self._tx() as c:
            if contact is not None:
                if c.execute("UPDATE accounts SET contact = ? WHERE id = ?",
                             (json.dumps(contact), account_id)).rowcount:
                    self._audit(c, "account.contact_changed", f"acme:{account_id}", account_id,
                                contact=contact)
            if status is not None:
                if c.execute("UPDATE accounts SET status = ? WHERE id = ? AND status != ?",
                             (status, account_id, status)).rowcount:
                    self._audit(c, f"account.{status}", f"acme:{account_id}", account_id)
                if status == Status.DEACTIVATED:
                    # §7.3.6: pending authorizations of a deactivated account go too.
                    c.execute("UPDATE authzs SET status = ? WHERE account_id = ? AND status = ?",
                              (Status.DEACTIVATED, account_id, Status.PENDING))

    def change_account_key(self, account_id: str, jwk: dict[str, Any], thumbprint: str) -> bool:
        try:
            with self._tx() as c:
                c.execute("UPDATE accounts SET jwk = ?, thumbprint = ? WHERE id = ?",
                          (json.dumps(jwk), thumbprint, account_id))
                self._audit(c, "account.key_changed", f"acme:{account_id}", account_id,
                            key=thumbprint)
        except sqlite3.IntegrityError:
            return False
        return True

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

    def set_order_status(self, order_id: str, status: str, *, expect: str,
                         error: dict[str, Any] | None = None, csr_der: bytes | None = None) -> bool:
        """Compare-and-set: only moves an order that is still in `expect`."""
        with self._tx() as c:
            n = c.execute("UPDATE orders SET status = ?, error = COALESCE(?, error), "
                          "csr_der = COALESCE(?, csr_der) WHERE id = ? AND status = ?",
                          (status, json.dumps(error) if error else None, csr_der, order_id,
                           expect)).rowcount
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

    # -- certificates -----------------------------------------------------------------
    @staticmethod
    def _cert(row: sqlite3.Row) -> Certificate:
        return Certificate(serial=row["serial"], account_id=row["account_id"],
                           order_id=row["order_id"], chain_pem=row["chain_pem"],
                           not_before=_dt(row["not_before"]),  # type: ignore[arg-type]
                           not_after=_dt(row["not_after"]),  # type: ignore[arg-type]
                           identifiers=_idents(row["identifiers"]),
                           key_fingerprint=row["key_fingerprint"], status=row["status"],
                           revoked_at=_dt(row["revoked_at"]),
                           revocation_reason=row["revocation_reason"], ari_id=row["ari_id"],
                           device_id=row["device_id"])

    def complete_order(self, order_id: str, cert: Certificate) -> bool:
        """Store the certificate and mark its order valid in one transaction."""
        try:
            return self._complete_order(order_id, cert)
        except _Rollback:
            return False

    def _complete_order(self, order_id: str, cert: Certificate) -> bool:
        with self._tx() as c:
            n = c.execute("UPDATE orders SET status = ?, certificate_serial = ? "
                          "WHERE id = ? AND status = ?",
                          (Status.VALID, cert.serial, order_id, Status.PROCESSING)).rowcount
            if n != 1:
                raise _Rollback()
            c.execute("INSERT INTO certificates (serial, account_id, order_id, chain_pem, not_before, "
                      "not_after, identifiers, key_fingerprint, status, ari_id, device_id) "
                      "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                      (cert.serial, cert.account_id, cert.order_id, cert.chain_pem,
                       _ts(cert.not_before), _ts(cert.not_after), _idents_json(cert.identifiers),
                       cert.key_fingerprint, cert.status, cert.ari_id, cert.device_id))
            if cert.device_id is not None:
                c.execute("UPDATE nodes SET status = ?, current_serial = ?, last_issued_at = ?, "
                          "account_id = ?, pending_account_id = NULL, updated_at = ? "
                          "WHERE device_id = ?",
                          (NodeStatus.ACTIVE, cert.serial, _ts(cert.not_before), cert.account_id,
                           _ts(cert.not_before), cert.device_id))
            self._audit(c, "certificate.issued", f"acme:{cert.account_id}", cert.serial,
                        device_id=cert.device_id, order=order_id,
                        identifiers=[f"{i.type}:{i.value}" for i in cert.identifiers],
                        not_after=_ts(cert.not_after))
        return True

    def get_certificate(self, serial: str) -> Certificate | None:
        row = self._one("SELECT * FROM certificates WHERE serial = ?", [serial])
        return self._cert(row) if row else None

    def get_certificate_by_ari_id(self, ari_id: str) -> Certificate | None:
        row = self._one("SELECT * FROM certificates WHERE ari_id = ?", [ari_id])
        return self._cert(row) if row else None

    def key_in_use(self, key_fingerprint: str) -> bool:
        return self._one("SELECT 1 FROM certificates WHERE key_fingerprint = ? LIMIT 1",
                         [key_fingerprint]) is not None

    def is_account_key(self, thumbprint: str) -> bool:
        return self._one("SELECT 1 FROM accounts WHERE thumbprint = ?", [thumbprint]) is not None

    def revoke_certificate(self, serial: str, *, reason: int, when: datetime,
                           actor: str = "server", via: str | None = None) -> bool:
        """Every revocation path (ACME, CLI, decommission, rejoin) ends here, in any process."""
        with self._tx() as c:
            done = c.execute("UPDATE certificates SET status = ?, revoked_at = ?, revocation_reason = ? "
                             "WHERE serial = ? AND status = ?",
                             (Status.REVOKED, _ts(when), reason, serial, Status.VALID)).rowcount == 1
            if done:
                device = c.execute("SELECT device_id FROM certificates WHERE serial = ?",
                                   (serial,)).fetchone()[0]
                self._audit(c, "certificate.revoked", actor, serial, device_id=device,
                            reason=chain.REASON_NAMES.get(reason, str(reason)), code=reason,
                            via=via)
                # The feed event commits with the revocation or not at all, so a gateway
                # following the feed can never miss one.
                c.execute("INSERT INTO revocation_events (serial, revoked_at, reason, not_after) "
                          "SELECT serial, revoked_at, revocation_reason, not_after "
                          "FROM certificates WHERE serial = ?", (serial,))
        if done:
            for listener in self._revocation_listeners:
                self._after_commit(listener)
        return done

    def revoked_certificates(self) -> Iterator[tuple[str, datetime, int | None]]:
        for r in self.conn.execute("SELECT serial, revoked_at, revocation_reason FROM certificates "
                                   "WHERE status = ?", [Status.REVOKED]):
            yield r[0], _dt(r[1]), r[2]  # type: ignore[misc]

    def order_replacing(self, ari_id: str) -> str | None:
        row = self._one("SELECT id FROM orders WHERE replaces = ? AND status != ? LIMIT 1",
                        [ari_id, Status.INVALID])
        return row[0] if row else None

    # -- external account binding ------------------------------------------------------
    def insert_eab_key(self, key: EabKey, node: Node | None = None, *,
                       actor: str = "server") -> None:
        """A new EAB key; with `node`, the device it was earned by is recorded too."""
        with self._tx() as c:
            if node is not None:
                self._upsert_node(c, node)
            c.execute("INSERT INTO eab_keys (kid, hmac_key, created_at, account_id, revoked, note, "
                      "device_id, bootstrap_spki, bootstrap_serial) VALUES (?,?,?,?,?,?,?,?,?)",
                      (key.kid, key.hmac_key, _ts(key.created_at), None, 0, key.note,
                       key.device_id, key.bootstrap_spki, key.bootstrap_serial))
            self._audit(c, "eab.created", actor, key.kid, node=node.node_id if node else None,
                        note=key.note or None, device=key.device_id,
                        bootstrap_serial=key.bootstrap_serial)  # never the HMAC key

    def get_eab_key(self, kid: str) -> EabKey | None:
        r = self._one("SELECT * FROM eab_keys WHERE kid = ?", [kid])
        if not r:
            return None
        return EabKey(kid=r["kid"], hmac_key=r["hmac_key"], created_at=_dt(r["created_at"]),  # type: ignore[arg-type]
                      account_id=r["account_id"], revoked=bool(r["revoked"]), note=r["note"] or "",
                      device_id=r["device_id"], bootstrap_spki=r["bootstrap_spki"],
                      bootstrap_serial=r["bootstrap_serial"])

    def list_eab_keys(self) -> list[EabKey]:
        kids = [r[0] for r in self.conn.execute("SELECT kid FROM eab_keys ORDER BY created_at")]
        return [k for k in (self.get_eab_key(kid) for kid in kids) if k]

    def revoke_eab_key(self, kid: str, *, actor: str = "server") -> bool:
        with self._tx() as c:
            done = c.execute("UPDATE eab_keys SET revoked = 1 WHERE kid = ? AND revoked = 0",
                             (kid,)).rowcount == 1
            if done:
                self._audit(c, "eab.revoked", actor, kid)
            return done

    # -- revocation feed ----------------------------------------------------------------
    # In-process observers of committed revocations (the feed wakes its long-polls); other
    # processes writing the same file are seen by polling revocation_head().
    _revocation_listeners: tuple[Callable[[], None], ...] = ()

    def add_revocation_listener(self, listener: Callable[[], None]) -> None:
        self._revocation_listeners = (*self._revocation_listeners, listener)

    def remove_revocation_listener(self, listener: Callable[[], None]) -> None:
        self._revocation_listeners = tuple(x for x in self._revocation_listeners if x != listener)

    def revocation_head(self) -> int:
        """The highest event seq ever assigned (0: none). sqlite_sequence keeps it even when
        the newest rows are pruned, so a gateway's position is never mistaken for the future."""
        row = self._one("SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence "
                        "WHERE name = 'revocation_events'), 0), "
                        "COALESCE((SELECT MAX(seq) FROM revocation_events), 0))")
        return int(row[0]) if row else 0

    def revocation_events_since(self, seq: int, limit: int) -> list[RevocationEvent]:
        # Rows of certificates that have expired may be pruned some day (by not_after, which
        # is indexed): a gateway refuses expired certificates anyway. Never before expiry.
        return [RevocationEvent(seq=r[0], serial=r[1], revoked_at=r[2], reason=r[3], not_after=r[4])
                for r in self.conn.execute(
                    "SELECT seq, serial, revoked_at, reason, not_after FROM revocation_events "
                    "WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))]

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


@dataclass(frozen=True)
class RevocationEvent:
    """One row of the revocation feed; times as stored (ISO 8601, UTC)."""

    seq: int
    serial: str  # hex, as in the certificates table
    revoked_at: str
    reason: int | None
    not_after: str


def _log_unwritten_audit(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        logging.getLogger("nodetrust.audit").error("audit event not written: %s", fut.exception())


class _Conflict(Exception):
    pass


class _Rollback(Exception):
    pass
