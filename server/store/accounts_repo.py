"""Accounts and external account binding keys. Mixed into `server.store.repo.Store`."""
from __future__ import annotations

import json
import sqlite3
from typing import Any

from server.models import Account, EabKey, Node, Status
from server.store.rows import _Conflict, _dt, _ts


class AccountsRepo:
    # Mixin: relies on StoreBase (conn, _tx, _one, _after_commit) and the other repos.
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
