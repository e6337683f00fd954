"""What every RA service works with, injected once (time included, for tests)."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from server.ca import CertificateAuthority
from server.config import ServerConfig
from server.store.repo import Store
from server.telemetry import Telemetry


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    """Resource ids are random, so URLs cannot be enumerated."""
    return secrets.token_urlsafe(12)


@dataclass
class Deps:
    cfg: ServerConfig
    store: Store
    ca: CertificateAuthority
    now: Callable[[], datetime] = field(default=utcnow)
    telemetry: Telemetry = field(default_factory=Telemetry)  # counters for /metrics
