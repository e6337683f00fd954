"""`nodetrust enroll --daemon`: a long-lived renewer. Enrolls if needed, then renews inside
the server's ARI window (RFC 9773: at a random moment in it, so a fleet does not renew at
once), checking back at least every `check_every` because the server may move the window
(a revoked certificate gets a window in the past). Errors back off exponentially."""
from __future__ import annotations

import datetime as dt
import random
import signal
import threading
from dataclasses import replace
from typing import Callable

from nodetrust.enroll import EnrollRequest, EnrollResult, enroll

MIN_BACKOFF, MAX_BACKOFF = 30.0, 900.0


def next_wake(result: EnrollResult, now: dt.datetime, check_every: float,
              rng: random.Random) -> float:
    """Seconds to sleep after `result`: a random point of the renewal window, but never
    longer than `check_every`."""
    if result.renew_from is None:
        return check_every
    start, end = result.renew_from, result.renew_until or result.renew_from
    target = start + (end - start) * rng.random() if end > start else start
    return max(1.0, min(check_every, (target - now).total_seconds()))


def run_daemon(req: EnrollRequest, *, check_every: float, report: Callable[[str], None],
               errors: tuple[type[BaseException], ...], describe: Callable[[BaseException], str],
               stop: threading.Event | None = None, rng: random.Random | None = None) -> int:
    """Loop until SIGTERM/SIGINT (or `stop`); returns 0."""
    stop = stop or threading.Event()
    rng = rng or random.Random()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, lambda *_: stop.set())
        except ValueError:  # not the main thread (tests): `stop` is enough
            pass
    req = replace(req, renew=True, force=False)
    backoff = MIN_BACKOFF
    while not stop.is_set():
        try:
            result = enroll(req)
        except errors as exc:
            report(f"renewal failed, retrying in {backoff:.0f}s: {describe(exc)}")
            stop.wait(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)
            continue
        backoff = MIN_BACKOFF
        wait = next_wake(result, dt.datetime.now(dt.UTC), check_every, rng)
        if result.action != "not-due":
            report(f"{result.action}: serial {result.serial}, valid until "
                   f"{result.not_after:%Y-%m-%d %H:%M:%S} UTC")
        report(f"next check in {wait:.0f}s"
               + (f" (renewal window {result.renew_from:%Y-%m-%d %H:%M} to "
                  f"{result.renew_until:%Y-%m-%d %H:%M} UTC)" if result.renew_from and
                  result.renew_until else ""))
        stop.wait(wait)
    report("stopped")
    return 0


