"""The gateway's view of revocations: an in-memory revoked set fed by the server's feed.

`RevocationState` is what the data path reads on every request: one set membership and
one float comparison, nothing else. `FeedClient` keeps it current by long-polling
`GET /feed/revocations` over HTTPS. Fail closed: the state is only fresh while answers
keep arriving (an idle feed still answers every `wait` seconds), and it starts not fresh,
so a gateway refuses everything until it has caught up from seq 0.
"""
from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger("nodetrust.gateway.revocation")

Clock = Callable[[], float]


class RevocationState:
    def __init__(self, max_staleness: float) -> None:
        if max_staleness <= 0:
            raise ValueError("max_staleness must be positive")
        self.max_staleness = max_staleness
        self._revoked: set[int] = set()
        self._heard_at: float | None = None  # time.monotonic() of the last feed answer
        self.last_seq = 0  # the last event applied; the feed resumes after it
        # How late the newest event reached us: the server's answer time minus the time it
        # recorded the revocation (both on the server's clock, so no skew). 0: none yet.
        self.lag_seconds = 0.0

    def is_revoked(self, serial: int) -> bool:
        return serial in self._revoked

    def is_fresh(self, now: float) -> bool:
        heard = self._heard_at
        return heard is not None and now - heard <= self.max_staleness

    def mark_revoked(self, serials: Iterable[int], seq: int, now: float) -> None:
        # set.update is one C call: a request on this loop sees all of a batch or none.
        self._revoked.update(serials)
        self.last_seq = max(self.last_seq, seq)
        self.touch(now)

    def touch(self, now: float) -> None:
        self._heard_at = now

    @property
    def heard_at(self) -> float | None:
        return self._heard_at

    def age(self, now: float) -> float:
        """Seconds since the last feed answer (inf before the first): the staleness gauge."""
        return float("inf") if self._heard_at is None else now - self._heard_at

    def __len__(self) -> int:
        return len(self._revoked)


class FeedError(Exception):
    """The feed answered, but not with something we can apply."""


class FeedClient:
    BACKOFF_MIN = 0.1

    def __init__(self, state: RevocationState, *, feed_url: str, token: str, ca_file: Path,
                 wait: float = 10.0, backoff_max: float = 2.0,
                 clock: Clock = time.monotonic,
                 on_labels: Callable[[dict[str, list[str]]], None] | None = None) -> None:
        self.state, self.feed_url, self.ca_file = state, feed_url, ca_file
        self._token = token.strip()
        # An idle feed answers every `wait` s and that is what keeps us fresh: a hold longer
        # than a third of max_staleness would let a healthy but idle gateway go stale.
        self.wait = min(wait, state.max_staleness / 3)
        if self.wait < wait:
            log.warning("feed wait %.1fs capped to %.1fs (max_staleness %.1fs)",
                        wait, self.wait, state.max_staleness)
        self.backoff_max = max(backoff_max, self.BACKOFF_MIN)
        self._clock = clock
        # node id -> labels known to the server, pushed to the route policy when they change
        self.on_labels = on_labels
        self._labels_version: str | None = None
        self.answers = 0  # successful answers
        self.errors = 0  # failed polls (connection, TLS, HTTP status, bad body)
        self.last_error = ""
        self._progress = asyncio.Event()  # replaced after each set: one per answer or error

    # -- the loop -----------------------------------------------------------------------
    async def run(self) -> None:
        # sock_read bounds a silent network cut: a hold never lasts longer than `wait`.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0,
                                        sock_read=self.wait + max(2.0, self.wait / 2))
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        delay = 0.0
        while True:
            try:
                # Read here, not in __init__: on a first start the gateway may come up before
                # the server has written its CA.
                ctx = ssl.create_default_context(cafile=str(self.ca_file))
            except (OSError, ssl.SSLError) as exc:
                delay = await self._failed(exc, delay)
                continue
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=1),
                                             timeout=timeout, headers=headers,
                                             trust_env=False) as session:
                delay = await self._follow(session, delay)

    async def _follow(self, session: aiohttp.ClientSession, delay: float) -> float:
        catching_up = True
        while True:
            try:
                # Catching up (start, reconnect, more pages): do not wait on an empty answer,
                # so freshness comes back after one round trip.
                catching_up = await self._poll(session, 0.0 if catching_up else self.wait)
            except (TimeoutError, aiohttp.ClientError, FeedError, ValueError, KeyError, TypeError) as exc:  # the last three: a malformed body
                delay = await self._failed(exc, delay)
                catching_up = True
                continue
            if delay:
                log.info("revocation feed back (last seq %d)", self.state.last_seq)
            delay = 0.0

    async def _failed(self, exc: Exception, delay: float) -> float:
        """Count, log and back off (capped, jittered so replicas do not reconnect in step)."""
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._signal()
        delay = min(max(delay * 2, self.BACKOFF_MIN), self.backoff_max)
        log.warning("revocation feed %s: %s; retrying in %.1fs (last seq %d)",
                    self.feed_url, self.last_error, delay, self.state.last_seq)
        await asyncio.sleep(random.uniform(delay / 2, delay))
        return delay

    async def _poll(self, session: aiohttp.ClientSession, wait: float) -> bool:
        """One request; applies its events. True when the server has more to send."""
        since = self.state.last_seq
        params = {"since": str(since), "wait": f"{wait:g}"}
        async with session.get(self.feed_url, params=params) as resp:
            if resp.status == 409:
                # Our position is beyond the server's last event: its database was replaced
                # or restored. Read everything again; the revoked set only ever grows.
                log.error("revocation feed: server has no event %d (%s); restarting from 0",
                          since, (await resp.text())[:200])
                self.state.last_seq = 0
                return True
            if resp.status != 200:
                raise FeedError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            body = await resp.json(content_type=None)
        self._apply(body, since)
        version = body.get("labels_version")
        if (self.on_labels is not None and isinstance(version, str)
                and version != self._labels_version):
            await self._fetch_labels(session)
            self._labels_version = version
        self.answers += 1
        self._signal()
        return bool(body.get("more", False))

    async def _fetch_labels(self, session: aiohttp.ClientSession) -> None:
        url = self.feed_url.rsplit("/", 1)[0] + "/labels"
        async with session.get(url) as resp:
            if resp.status != 200:
                raise FeedError(f"labels: HTTP {resp.status}: {(await resp.text())[:200]}")
            body = await resp.json(content_type=None)
        labels = body["labels"]
        if not isinstance(labels, dict):
            raise FeedError("labels: expected an object of node id -> labels")
        assert self.on_labels is not None
        self.on_labels({str(k): [str(x) for x in v] for k, v in labels.items()})
        log.info("node labels from the server: %d node(s)", len(labels))

    def _apply(self, body: dict[str, Any], since: int) -> None:
        events = body["events"]
        if not isinstance(events, list):
            raise FeedError("events: not a list")
        serials: list[int] = []
        seq = since
        for e in events:
            if int(e["seq"]) <= seq:
                raise FeedError(f"event seq {e['seq']} after {seq}: out of order")
            seq = int(e["seq"])
            serials.append(int(e["serial"], 16))
        if not serials:
            self.state.touch(self._clock())
            return
        lag = (_when(body["server_time"]) - _when(events[-1]["revoked_at"])).total_seconds()
        self.state.mark_revoked(serials, seq, self._clock())
        self.state.lag_seconds = max(0.0, lag)
        log.info("revocation feed: %d revoked (seq %d), lag %.3fs",
                 len(serials), seq, self.state.lag_seconds)

    # -- observing ------------------------------------------------------------------------
    def _signal(self) -> None:
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Return once `predicate()` holds, re-checked after every answer or error; raises
        TimeoutError after `timeout` seconds. For readiness checks and tests."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._progress.wait()


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value)
