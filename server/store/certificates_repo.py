"""Certificates, revocation and the revocation feed. Mixed into `server.store.repo.Store`."""
from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Callable, Iterator

from server.models import Certificate, NodeStatus, Status
from server.store import audit as chain
from server.store.rows import RevocationEvent, _dt, _idents, _idents_json, _Rollback, _ts


class CertificatesRepo:
    # Mixin: relies on StoreBase (conn, _tx, _one, _after_commit) and the other repos.
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
