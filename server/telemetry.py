"""In-process counters and histograms: what happened in this server process since it
started (challenge results, issuance latency, admin logins).

The RA calls the hooks on `Telemetry`; the admin listener renders them with the gauges it
computes from the store at scrape time (`server.admin.metrics`). Everything here runs on
the event loop thread, so plain dicts suffice. Label values are bounded by the callers
(challenge types, known formats, error codes, attestation check names), never free text.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]

# Seconds. Order created -> issued spans a client's whole validation round trip.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0)


@dataclass
class Counter:
    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; +Inf last
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs as the exposition format wants them."""
        out, total = [], 0
        for bound, n in zip([*(f"{b:g}" for b in self.buckets), "+Inf"], self.counts):
            total += n
            out.append((bound, total))
        return out


class Telemetry:
    def __init__(self) -> None:
        self.challenges = Counter(
            "nodetrust_challenge_results_total",
            "Challenge validations finished, by challenge type, result and ACME error code")
        self.enrollments = Counter(
            "nodetrust_device_enrollments_total",
            "device-attest-01 results by attestation format, result and failed check")
        self.issued = Counter("nodetrust_certificates_issued_total",
                              "Certificates issued by this process, by kind (device | dns)")
        self.issuance_latency = Histogram(
            "nodetrust_issuance_latency_seconds",
            "Order created -> certificate issued, seconds")
        self.finalize_duration = Histogram(
            "nodetrust_finalize_duration_seconds",
            "Finalize request: CSR checks, signing and the store commit, seconds")
        self.admin_logins = Counter("nodetrust_admin_logins_total",
                                    "Dashboard logins by result (ok | refused)")

    def counters(self) -> list[Counter]:
        return [self.challenges, self.enrollments, self.issued, self.admin_logins]

    def histograms(self) -> list[Histogram]:
        return [self.issuance_latency, self.finalize_duration]

    # -- hooks the RA calls -------------------------------------------------------------
    def challenge_result(self, challenge_type: str, error_code: str | None) -> None:
        self.challenges.inc(type=challenge_type, result="invalid" if error_code else "valid",
                            error=error_code or "")

    def device_enrollment(self, fmt: str, failed_check: str | None) -> None:
        self.enrollments.inc(format=fmt, result="invalid" if failed_check else "valid",
                             reason=failed_check or "")

    def certificate_issued(self, *, device: bool, latency: float | None,
                           finalize: float | None) -> None:
        self.issued.inc(kind="device" if device else "dns")
        if latency is not None and latency >= 0:
            self.issuance_latency.observe(latency)
        if finalize is not None and finalize >= 0:
            self.finalize_duration.observe(finalize)
