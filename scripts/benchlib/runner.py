"""Run the benchmark against each target: fresh server, same load generator, same CPU split."""

from __future__ import annotations

import asyncio
import functools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .acme_load import LoadSpec, PollPolicy, run_load
from .devices import DeviceFleet
from .nodetrust import start_nodetrust
from .pebble import start_pebble
from .procs import CpuProbe, ServerHandle, ServerStartError, can_pin, cpu_split, pin_self
from .report import RunResult
from .responder import Http01Responder

Starter = Callable[[Path, int, "int | None", "int | None"], ServerHandle]
STARTERS: dict[str, Starter] = {"pebble": start_pebble, "nodetrust": start_nodetrust}


@dataclass
class BenchOptions:
    targets: list[str]
    enrollments: int | None
    duration: float | None
    concurrency: int
    pin_cores: bool
    poll_cap: float = 0.05
    request_timeout: float = 10.0
    stall_timeout: float = 20.0
    run_timeout: float = 600.0
    progress_interval: float = 3.0
    keep_tmp: bool = False
    challenge: str = "http-01"  # or "device-attest-01" (nodetrust only; needs a DeviceFleet)


_PIN_SPLIT: tuple[int, int] | None = None  # (server cpu, client cpu), kept across runs


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run_bench(opts: BenchOptions, fleet: DeviceFleet | None = None) -> list[RunResult]:
    """One run per target. device-attest-01: `fleet` (minted beforehand, not timed) supplies
    the manufacturer root for the server's roots folder and one device per enrollment."""
    if opts.challenge == "device-attest-01" and (fleet is None or opts.targets != ["nodetrust"]):
        raise ValueError("device-attest-01 runs against nodetrust only, with a minted fleet")
    server_cpu: int | None = None
    client_cpu: int | None = None
    pinned = "no"
    if opts.pin_cores:
        global _PIN_SPLIT
        if _PIN_SPLIT is None and can_pin():
            _PIN_SPLIT = cpu_split()  # once: after pin_self we see only our own core
        if _PIN_SPLIT is not None:
            server_cpu, client_cpu = _PIN_SPLIT
            pin_self(client_cpu)  # before any thread exists, so every thread inherits it
            pinned = f"server cpu {server_cpu}, load generator cpu {client_cpu}"
        else:
            log("bench-enroll: --pin-cores needs taskset and 2 CPUs; running unpinned")
    responder = Http01Responder()
    port = await responder.start()
    results: list[RunResult] = []
    try:
        for target in opts.targets:
            results.append(await _run_target(target, opts, responder, port, server_cpu,
                                             client_cpu, pinned, fleet))
    finally:
        await responder.stop()
    return results


async def _run_target(target: str, opts: BenchOptions, responder: Http01Responder, port: int,
                      server_cpu: int | None, client_cpu: int | None, pinned: str,
                      fleet: DeviceFleet | None = None) -> RunResult:
    starter = STARTERS[target]
    if fleet is not None:
        starter = functools.partial(start_nodetrust, roots_pem=fleet.root_pem)
    spec = LoadSpec(
        label=target, directory_url="", ca_path=Path(), concurrency=opts.concurrency,
        enrollments=opts.enrollments, duration=opts.duration, poll=PollPolicy(cap=opts.poll_cap),
        request_timeout=opts.request_timeout, stall_timeout=opts.stall_timeout,
        run_timeout=opts.run_timeout, progress_interval=opts.progress_interval, pinned=pinned,
        challenge=opts.challenge, devices=fleet.devices if fleet is not None else None,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-enroll-{target}-"))
    log(f"[{target}] starting server (workdir {tmp})")
    try:
        handle = await asyncio.to_thread(starter, tmp, port, server_cpu, client_cpu)
    except (ServerStartError, OSError) as exc:
        log(f"[{target}] server did not start: {exc}")
        mode = "duration" if opts.duration is not None else "count"
        requested = opts.duration if opts.duration is not None else float(opts.enrollments or 0)
        result = RunResult(target, opts.concurrency, mode, requested, pinned=pinned,
                           challenge=opts.challenge)
        result.record_error("server-start", str(exc).splitlines()[0] if str(exc) else repr(exc))
        result.notes.append("server did not start")
        _cleanup(tmp, opts.keep_tmp, failed=True)
        return result
    log(f"[{target}] {handle.directory_url} up; {_describe(opts)}")
    t0 = time.monotonic()
    try:
        spec = replace(spec, directory_url=handle.directory_url, ca_path=handle.ca_path)
        probe = CpuProbe(handle.server_pid, [p.pid for p in handle.procs[1:]], server_cpu,
                         client_cpu)
        result = await run_load(spec, responder, probe, log)
        if fleet is not None:
            result.notes.append("Pebble has no device-attest-01: nodetrust only")
    finally:
        await asyncio.to_thread(handle.stop)
    if result.stalled:
        log(f"[{target}] server log tail:\n{handle.logs(15)}")
    log(f"[{target}] done in {time.monotonic() - t0:.1f}s: ok={result.ok} errors={result.errors}")
    _cleanup(tmp, opts.keep_tmp, failed=result.stalled or result.errors > 0)
    return result


def _describe(opts: BenchOptions) -> str:
    what = f"for {opts.duration:g}s" if opts.duration is not None else f"{opts.enrollments} times"
    how = " (device-attest-01, one device each)" if opts.challenge == "device-attest-01" else ""
    return f"enrolling {what}{how} at concurrency {opts.concurrency}"


def _cleanup(tmp: Path, keep: bool, failed: bool) -> None:
    if keep or failed:
        log(f"  (kept {tmp})")
        return
    shutil.rmtree(tmp, ignore_errors=True)
