"""Replay nonces (RFC 8555 §6.5): single use, expiring, bounded in number.

Kept in memory on purpose: after a restart every outstanding nonce is refused with
`badNonce` plus a fresh one, which every ACME client handles by retrying once.
"""
from __future__ import annotations

import base64
import secrets
import time
from collections import OrderedDict
from typing import Callable


class NonceStore:
    def __init__(self, *, ttl: float, max_nonces: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._max = max_nonces
        self._clock = clock
        # Insertion order == expiry order (one TTL for all), so the oldest is always first.
        self._live: OrderedDict[str, float] = OrderedDict()
        self._pool: list[bytes] = []

    def issue(self) -> str:
        if not self._pool:
            # One getrandom() call per 256 nonces: a syscall per response showed in profiles.
            raw = secrets.token_bytes(16 * 256)
            self._pool = [raw[i:i + 16] for i in range(0, len(raw), 16)]
        nonce = base64.urlsafe_b64encode(self._pool.pop()).rstrip(b"=").decode()
        now = self._clock()
        self._live[nonce] = now + self._ttl
        self._evict(now)
        return nonce

    def redeem(self, nonce: str) -> bool:
        """True once per issued, unexpired nonce."""
        expiry = self._live.pop(nonce, None)
        return expiry is not None and expiry > self._clock()

    def _evict(self, now: float) -> None:
        live = self._live
        while live and (len(live) > self._max or next(iter(live.values())) <= now):
            live.popitem(last=False)

    def __len__(self) -> int:
        return len(self._live)
