"""Live reload of the route policy (and the TLS certificate) on SIGHUP or file change.

A reload swaps in a whole new compiled policy; open connections keep going and their next request
is checked against the new rules. A file that does not load keeps the old policy and says why.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from gateway.authz import Authorizer, PolicyError, load_policy
from gateway.metrics import Metrics
from gateway.tls import CertificateReloader

__all__ = ["PolicyReloader"]

log = logging.getLogger("nodetrust.gateway.reload")
POLL_SECONDS = 1.0


class PolicyReloader:
    def __init__(self, path: Path, authz: Authorizer, metrics: Metrics, *, policy_only: bool,
                 certs: CertificateReloader | None = None) -> None:
        self.path, self.authz, self.metrics = path, authz, metrics
        self.policy_only, self.certs = policy_only, certs
        self._stamp = self._file_stamp()
        self._timer: asyncio.TimerHandle | None = None

    def _file_stamp(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError:
            return (0, 0, 0)
        return (st.st_mtime_ns, st.st_size, st.st_ino)  # inode: editors that rename in place

    def check(self, *, force: bool = False) -> bool:
        """Reload if the file changed (or `force`, for SIGHUP). True if a new policy is live."""
        if self.certs is not None:
            self.certs.check(force=force)
        stamp = self._file_stamp()
        if stamp == self._stamp and not force:
            return False
        self._stamp = stamp
        try:
            policy = load_policy(self.path, policy_only=self.policy_only)
        except PolicyError as e:
            self.metrics.add("reload_error")
            log.error("policy reload failed, keeping the previous policy: %s", e)
            return False
        self.authz.set_policy(policy)
        self.metrics.add("reload_ok")
        log.info("policy reloaded from %s: %d rules", self.path, len(policy.rules))
        return True

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(POLL_SECONDS, self._poll)

    def _poll(self) -> None:
        self.check()
        self.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
