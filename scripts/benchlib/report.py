"""Benchmark results: one RunResult per target, a text table and a JSON form."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (nan when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class RunResult:
    target: str
    concurrency: int
    mode: str  # "count" or "duration"
    requested: float  # enrollments (count mode) or seconds (duration mode)
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    first_errors: dict[str, str] = field(default_factory=dict)
    abandoned: int = 0  # in flight when a duration run ended (not errors)
    stalled: bool = False
    elapsed_s: float = 0.0
    rate: float = 0.0  # successful enrollments per second
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    mean_ms: float = math.nan
    max_ms: float = math.nan
    requests: int = 0
    nonce_retries: int = 0
    client_cpu_pct: float = math.nan  # load generator (+ http-01 responder), % of one core
    server_cpu_pct: float = math.nan  # server process tree, % of one core
    helper_cpu_pct: float = math.nan  # e.g. pebble-challtestsrv (DNS for Pebble), % of one core
    server_core_busy_pct: float = math.nan  # whole pinned core, from /proc/stat
    client_core_busy_pct: float = math.nan
    requests_per_enrollment: float = math.nan
    http01_fetches_per_enrollment: float = math.nan
    pinned: str = "no"
    challenge: str = "http-01"  # or "device-attest-01" (rate = devices enrolled per second)
    notes: list[str] = field(default_factory=list)

    def set_latencies(self, seconds: list[float]) -> None:
        values = sorted(seconds)
        self.p50_ms = percentile(values, 50) * 1000
        self.p99_ms = percentile(values, 99) * 1000
        self.mean_ms = (sum(values) / len(values) * 1000) if values else math.nan
        self.max_ms = (values[-1] * 1000) if values else math.nan

    def record_error(self, kind: str, text: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
        self.first_errors.setdefault(kind, text[:400])

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = None if math.isnan(value) else round(value, 3)
        return data


def _fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def ratios(results: list[RunResult]) -> dict[str, float] | None:
    """nodetrust/pebble ratios when both ran and pebble produced something."""
    by_target = {r.target: r for r in results}
    nt, pb = by_target.get("nodetrust"), by_target.get("pebble")
    if nt is None or pb is None or pb.rate <= 0:
        return None
    out = {"rate": nt.rate / pb.rate}
    for key in ("p50_ms", "p99_ms"):
        a, b = getattr(nt, key), getattr(pb, key)
        if not (math.isnan(a) or math.isnan(b) or b == 0):
            out[key] = a / b
    return out


def format_table(results: list[RunResult]) -> str:
    devices = bool(results) and results[0].challenge == "device-attest-01"
    rate_label = "devices/s" if devices else "enroll/s"
    header = (
        f"{'target':<10} {'ok':>7} {'errors':>6} {rate_label:>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'srv cpu%':>8} {'cli cpu%':>8} {'cores s/c':>9}  notes"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        notes = list(r.notes)
        if r.stalled:
            notes.insert(0, "STALLED")
        if r.abandoned:
            notes.append(f"{r.abandoned} in flight at end")
        cores = f"{_fmt(r.server_core_busy_pct, '.0f')}/{_fmt(r.client_core_busy_pct, '.0f')}"
        lines.append(
            f"{r.target:<10} {r.ok:>7} {r.errors:>6} {r.rate:>9.1f} {_fmt(r.p50_ms, '8.1f')} "
            f"{_fmt(r.p99_ms, '8.1f')} {_fmt(r.server_cpu_pct, '8.0f')} "
            f"{_fmt(r.client_cpu_pct, '8.0f')} {cores:>9}  {'; '.join(notes)}"
        )
    lines.append("(cpu% = % of one core used by the server tree / the load generator process; "
                 "cores s/c = busy % of the pinned server / load-generator core)")
    for r in results:
        for kind, count in sorted(r.error_kinds.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {r.target} error {kind} x{count}: {r.first_errors.get(kind, '')}")
    ratio = ratios(results)
    if ratio is not None:
        parts = [f"enroll/s x{ratio['rate']:.2f}"]
        parts += [f"{k.removesuffix('_ms')} latency x{v:.2f}" for k, v in ratio.items() if k != "rate"]
        lines.append("nodetrust/pebble: " + ", ".join(parts))
    mode = results[0].mode if results else ""
    if results:
        what = f"{results[0].requested:g} s" if mode == "duration" else f"{results[0].requested:g}"
        lines.append(f"({results[0].challenge}, {mode} {what}, concurrency "
                     f"{results[0].concurrency}, pinned: {results[0].pinned})")
    return "\n".join(lines)
