"""Row conversions and small types shared by the store's modules."""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from server.models import Identifier


def _ts(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt is not None else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _idents(raw: str) -> list[Identifier]:
    return [Identifier(i["type"], i["value"]) for i in json.loads(raw)]


def _idents_json(idents: Iterable[Identifier]) -> str:
    return json.dumps([i.to_json() for i in idents])


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
