"""The revocation feed for gateways: events since a sequence number, long-polled.

Every revocation writes a `revocation_events` row in its own transaction (the store does
that), so the feed is just "rows with seq > since". What this module adds is waiting:
a long-poll parks until the head moves. Revocations made in this process wake the waiters
at once (the store calls `notify` after the commit); revocations made by another process
on the same SQLite file (the operator CLI) are seen by a cheap head query every
`poll_interval`, run only while somebody is waiting.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from server.config import FeedSettings
from server.errors import AcmeProblem
from server.store.repo import RevocationEvent, Store

log = logging.getLogger("nodetrust.feed")


def load_or_create_token(path: Path) -> str:
    """A bearer token (the feed's, the admin API's): 32 random bytes, base64url, made 0600
    on first start."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        existing = path.read_text().strip()
        if not existing:
            raise ValueError(f"{path}: empty token file; delete it to make a new one") from None
        return existing
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


@dataclass(frozen=True)
class FeedPage:
    events: list[RevocationEvent]
    next: int
    more: bool
    server_time: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "events": [{"seq": e.seq, "serial": e.serial, "revoked_at": e.revoked_at,
                        "reason": e.reason, "not_after": e.not_after} for e in self.events],
            "next": self.next,
            "more": self.more,  # a full page: ask again at once, without waiting
            "server_time": self.server_time.isoformat(),
        }


class RevocationFeed:
    def __init__(self, store: Store, settings: FeedSettings, *, token: str,
                 now: Callable[[], datetime]) -> None:
        self.store, self.settings, self.now = store, settings, now
        self._token = token.encode()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()  # replaced after each set: one generation per change
        self._parked = asyncio.Event()
        self._waiting = 0
        self._seen_head = 0
        self._poller: asyncio.Task[None] | None = None
        self._closing = False
        self._positions: dict[int, float] = {}  # `since` asked -> when (monotonic), for lag

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._seen_head = self.store.revocation_head()
        self.store.add_revocation_listener(self.notify)

    async def close(self) -> None:
        """Release every parked long-poll (they answer with what they have), so a stopping
        server does not hold its shutdown for max_wait."""
        self._closing = True
        self.store.remove_revocation_listener(self.notify)
        self._wake()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    # -- authentication ----------------------------------------------------------------
    def check_authorization(self, header: str | None) -> None:
        scheme, _, presented = (header or "").partition(" ")
        # compare_digest: the comparison takes the same time wherever the first difference is.
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(),
                                                                 self._token):
            raise AcmeProblem("unauthorized", "the revocation feed needs the bearer token from "
                              "the server's data dir (feed.token)", status=401,
                              headers={"WWW-Authenticate": 'Bearer realm="nodetrust-feed"'})

    # -- reading -----------------------------------------------------------------------
    def page(self, since: int) -> FeedPage:
        self._note_position(since)
        limit = self.settings.page_size
        events = self.store.revocation_events_since(since, limit)
        if not events and since > self.store.revocation_head():
            raise AcmeProblem("conflict", f"since={since} is beyond this feed's last event; was "
                              "the server's database replaced? Start again from 0", status=409)
        return FeedPage(events=events, next=events[-1].seq if events else since,
                        more=len(events) == limit, server_time=self.now())

    async def wait_for_change(self, since: int, timeout: float) -> None:
        """Return once an event beyond `since` is committed, on close, or after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout, self.settings.max_wait.total_seconds())
        self._waiting += 1
        self._announce_parked()
        try:
            if self._poller is None or self._poller.done():
                self._poller = asyncio.create_task(self._poll_head(), name="feed-head-poll")
            while not self._closing and self.store.revocation_head() <= since:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            self._waiting -= 1

    @property
    def waiting(self) -> int:
        return self._waiting

    def lag(self) -> int:
        """Events the slowest recent subscriber has yet to fetch: head minus the lowest
        `since` asked in the last two long-poll periods (0 with no subscriber)."""
        self._prune_positions()
        if not self._positions:
            return 0
        return max(0, self.store.revocation_head() - min(self._positions))

    def _note_position(self, since: int) -> None:
        self._positions[since] = time.monotonic()
        if len(self._positions) > 1024:
            self._prune_positions()

    def _prune_positions(self) -> None:
        horizon = time.monotonic() - 2 * self.settings.max_wait.total_seconds() - 1
        for since in [k for k, t in self._positions.items() if t < horizon]:
            del self._positions[since]
        while len(self._positions) > 1024:  # keep the newest positions asked
            del self._positions[min(self._positions, key=self._positions.__getitem__)]

    async def wait_for_waiters(self, n: int = 1) -> None:
        """Diagnostics and tests: return once at least `n` long-polls are parked."""
        while self._waiting < n:
            await self._parked.wait()

    # -- waking ------------------------------------------------------------------------
    def notify(self) -> None:
        """Called by the store after a revocation commits; safe from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _announce_parked(self) -> None:
        parked, self._parked = self._parked, asyncio.Event()
        parked.set()

    async def _poll_head(self) -> None:
        """Catches writers in other processes; runs only while a long-poll is parked."""
        interval = self.settings.poll_interval.total_seconds()
        while self._waiting and not self._closing:
            await asyncio.sleep(interval)
            try:
                head = self.store.revocation_head()
            except Exception:  # a locked or vanished file must not kill the poller silently
                log.exception("revocation feed: cannot read the event head")
                continue
            if head != self._seen_head:
                self._seen_head = head
                self._wake()
