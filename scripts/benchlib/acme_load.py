"""The ACME enrollment load generator, identical for every target.

Each worker creates an ECDSA P-256 account, then loops: newOrder -> authz -> http-01 (served by
the shared responder) -> poll authz -> finalize with a fresh P-256 CSR -> poll order -> download
the certificate. Requests are signed by the lean ES256 signer in jws.py; nonces come from each
response's Replay-Nonce; a badNonce is retried once. Polls back off from 5 ms and honour
Retry-After, but never sleep longer than PollPolicy.cap, so a fast server is not hidden.

device-attest mode (nodetrust only): each enrollment takes the next simulated device
(devices.py), orders its permanent-identifier, answers the one device-attest-01 challenge with
an attObj signed by the device's bootstrap key, finalizes a CSR with no names and a fresh key,
and downloads the certificate.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from .devices import BenchDevice
from .jws import AccountKey, make_csr
from .procs import CpuProbe, CpuSample
from .report import RunResult
from .responder import Http01Responder

PROBLEM_PREFIX = "urn:ietf:params:acme:error:"
JOSE_HEADERS = {"Content-Type": "application/jose+json"}
PEM_CHAIN = "application/pem-certificate-chain"


class EnrollError(Exception):
    def __init__(self, kind: str, text: str) -> None:
        super().__init__(f"{kind}: {text}")
        self.kind = kind
        self.text = text


@dataclass(frozen=True)
class PollPolicy:
    cap: float = 0.05  # longest sleep between polls; Retry-After is capped to this too
    first: float = 0.005  # first back-off step; doubles up to cap

    def next_delay(self, step: float, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), step), self.cap)
            except ValueError:  # HTTP-date form: treat as "as long as allowed"
                return self.cap
        return min(step, self.cap)


@dataclass
class LoadSpec:
    label: str
    directory_url: str
    ca_path: Path
    concurrency: int
    enrollments: int | None  # count mode
    duration: float | None  # duration mode (wins over enrollments)
    poll: PollPolicy
    request_timeout: float = 10.0
    enroll_timeout: float = 30.0
    run_timeout: float = 600.0
    stall_timeout: float = 20.0  # no successful enrollment for this long: abort the run
    progress_interval: float = 3.0
    domain: str = "bench.test"
    pinned: str = "no"
    challenge: str = "http-01"  # or "device-attest-01"
    devices: list[BenchDevice] | None = None  # device-attest: one per enrollment, in order


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self, step: str) -> dict[str, Any]:
        try:
            data = json.loads(self.body)
        except ValueError as exc:
            raise EnrollError(f"{step}:bad-json", f"{exc}: {self.body[:200]!r}") from None
        if not isinstance(data, dict):
            raise EnrollError(f"{step}:bad-json", f"not an object: {self.body[:200]!r}")
        return data


class Counters:
    def __init__(self) -> None:
        self.requests = 0
        self.nonce_retries = 0


class AcmeClient:
    """One account on one server; requests are sequential, so one nonce slot suffices."""

    def __init__(self, session: aiohttp.ClientSession, directory: dict[str, Any],
                 counters: Counters) -> None:
        self.session = session
        self.directory = directory
        self.counters = counters
        self.key = AccountKey()
        self.kid: str | None = None
        self._nonce: str | None = None
        timeout = session.timeout.total
        self.timeout_s = float(timeout) if timeout is not None else 0.0

    async def _fresh_nonce(self) -> str:
        self.counters.requests += 1
        async with self.session.head(self.directory["newNonce"]) as resp:
            nonce = resp.headers.get("Replay-Nonce")
        if not nonce:
            raise EnrollError("newNonce:missing", f"HTTP {resp.status} without Replay-Nonce")
        return nonce

    async def post(self, url: str, payload: dict[str, Any] | None, step: str,
                   accept: str | None = None) -> Reply:
        headers = JOSE_HEADERS if accept is None else {**JOSE_HEADERS, "Accept": accept}
        try:
            for attempt in range(2):
                nonce = self._nonce or await self._fresh_nonce()
                self._nonce = None
                body = self.key.sign(url, nonce, payload, self.kid)
                self.counters.requests += 1
                async with self.session.post(url, data=body, headers=headers) as resp:
                    reply = Reply(resp.status, resp.headers, await resp.read())
                self._nonce = reply.headers.get("Replay-Nonce")
                if reply.status < 400:
                    return reply
                problem = _problem_type(reply)
                if problem == "badNonce" and attempt == 0:
                    self.counters.nonce_retries += 1
                    continue
                kind = f"{step}:{problem or f'http-{reply.status}'}"
                raise EnrollError(kind, reply.body[:400].decode(errors="replace"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            text = str(exc) or (f"no answer within {self.timeout_s:g}s"
                                if isinstance(exc, TimeoutError) else repr(exc))
            raise EnrollError(f"{step}:{type(exc).__name__}", text) from None
        raise AssertionError("unreachable")

    async def new_account(self) -> None:
        reply = await self.post(self.directory["newAccount"],
                                {"termsOfServiceAgreed": True}, "newAccount")
        self.kid = reply.headers.get("Location")
        if not self.kid:
            raise EnrollError("newAccount:no-location", f"HTTP {reply.status}")


def _problem_type(reply: Reply) -> str | None:
    try:
        typ = json.loads(reply.body).get("type")
    except (ValueError, AttributeError):
        return None
    return typ.removeprefix(PROBLEM_PREFIX) if isinstance(typ, str) else None


async def poll_until(client: AcmeClient, url: str, step: str, done: str, poll: PollPolicy,
                     deadline: float) -> dict[str, Any]:
    """POST-as-GET url until status == done; fail on invalid/other terminal states."""
    delay = poll.first
    while True:
        reply = await client.post(url, None, step)
        obj = reply.json(step)
        status = obj.get("status")
        if status == done:
            return obj
        if status in ("invalid", "deactivated", "expired", "revoked"):
            raise EnrollError(f"{step}:{status}", json.dumps(obj)[:400])
        wait = poll.next_delay(delay, reply.headers.get("Retry-After"))
        if time.monotonic() + wait > deadline:
            raise EnrollError(f"{step}:timeout", f"still {status!r} at the enrollment deadline")
        await asyncio.sleep(wait)
        delay = min(delay * 2, poll.cap)


async def _new_order(client: AcmeClient, ident: dict[str, str]) -> tuple[dict[str, Any], str]:
    reply = await client.post(client.directory["newOrder"], {"identifiers": [ident]}, "newOrder")
    order, order_url = reply.json("newOrder"), reply.headers.get("Location")
    if not order_url:
        raise EnrollError("newOrder:no-location", json.dumps(order)[:400])
    return order, order_url


async def _finalize_and_download(client: AcmeClient, order: dict[str, Any], order_url: str,
                                 csr: str, poll: PollPolicy, deadline: float) -> None:
    reply = await client.post(order["finalize"], {"csr": csr}, "finalize")
    order = reply.json("finalize")
    if order.get("status") != "valid":
        order = await poll_until(client, order_url, "poll-order", "valid", poll, deadline)
    cert_url = order.get("certificate")
    if not cert_url:
        raise EnrollError("poll-order:no-certificate", json.dumps(order)[:400])
    cert = await client.post(cert_url, None, "certificate", accept=PEM_CHAIN)
    if b"-----BEGIN CERTIFICATE-----" not in cert.body:
        raise EnrollError("certificate:not-pem", cert.body[:200].decode(errors="replace"))


async def enroll(client: AcmeClient, responder: Http01Responder, name: str, poll: PollPolicy,
                 deadline: float) -> None:
    """One complete enrollment for `name`; raises EnrollError on any failure."""
    order, order_url = await _new_order(client, {"type": "dns", "value": name})
    for authz_url in order.get("authorizations", []):
        authz = (await client.post(authz_url, None, "authz")).json("authz")
        if authz.get("status") == "valid":
            continue
        chall = next((c for c in authz.get("challenges", []) if c.get("type") == "http-01"), None)
        if chall is None:
            raise EnrollError("authz:no-http-01", json.dumps(authz)[:400])
        token = chall["token"]
        responder.add(token, client.key.key_authorization(token))
        try:
            answered = (await client.post(chall["url"], {}, "challenge")).json("challenge")
            if answered.get("status") == "invalid":
                raise EnrollError("challenge:invalid", json.dumps(answered)[:400])
            await poll_until(client, authz_url, "poll-authz", "valid", poll, deadline)
        finally:
            responder.remove(token)
    await _finalize_and_download(client, order, order_url, make_csr(name), poll, deadline)


async def enroll_device(client: AcmeClient, device: BenchDevice, poll: PollPolicy,
                        deadline: float) -> None:
    """One device-attest-01 enrollment of `device`; raises EnrollError on any failure."""
    order, order_url = await _new_order(
        client, {"type": "permanent-identifier", "value": device.device_id})
    for authz_url in order.get("authorizations", []):
        authz = (await client.post(authz_url, None, "authz")).json("authz")
        if authz.get("status") == "valid":
            continue
        chall = next((c for c in authz.get("challenges", [])
                      if c.get("type") == "device-attest-01"), None)
        if chall is None:
            raise EnrollError("authz:no-device-attest-01", json.dumps(authz)[:400])
        att_obj = device.att_obj(client.key.key_authorization(chall["token"]))
        answered = (await client.post(chall["url"], {"attObj": att_obj}, "challenge")
                    ).json("challenge")
        status = answered.get("status")
        if status == "invalid":
            detail = str((answered.get("error") or {}).get("detail", ""))
            raise EnrollError(f"challenge:invalid:{detail.split(':')[0] or '?'}",
                              json.dumps(answered)[:400])
        if status != "valid":  # the server answers synchronously; tolerate a late one anyway
            await poll_until(client, authz_url, "poll-authz", "valid", poll, deadline)
    await _finalize_and_download(client, order, order_url, make_csr(None), poll, deadline)


class _Run:
    """Shared state of one run: slot claiming, results, progress clock."""

    def __init__(self, spec: LoadSpec, result: RunResult) -> None:
        self.spec = spec
        self.result = result
        self.latencies: list[float] = []
        self.claimed = 0
        self.t_start = 0.0
        self.t_last_ok = 0.0
        self.t_last_done = 0.0

    def claim(self) -> bool:
        spec = self.spec
        if spec.duration is not None:
            ok = time.monotonic() < self.t_start + spec.duration
        else:
            ok = self.claimed < (spec.enrollments or 0)
        if ok and spec.devices is not None and self.claimed >= len(spec.devices):
            ok = False  # every minted device has enrolled
        self.claimed += ok
        return ok

    def finished(self) -> int:
        return self.result.ok + self.result.errors


async def _worker(idx: int, client: AcmeClient, responder: Http01Responder, run: _Run) -> None:
    seq = 0
    devices = run.spec.devices
    while run.claim():
        name = f"w{idx}-{seq}.{run.spec.domain}"
        device = devices[run.claimed - 1] if devices is not None else None
        seq += 1
        t0 = time.monotonic()
        try:
            if device is not None:
                await enroll_device(client, device, run.spec.poll, t0 + run.spec.enroll_timeout)
            else:
                await enroll(client, responder, name, run.spec.poll,
                             t0 + run.spec.enroll_timeout)
        except EnrollError as exc:
            run.result.record_error(exc.kind, exc.text)
        except Exception as exc:  # noqa: BLE001 - never let one enrollment crash the run
            run.result.record_error(f"unexpected:{type(exc).__name__}", repr(exc))
        else:
            now = time.monotonic()
            run.latencies.append(now - t0)
            run.result.ok += 1
            run.t_last_ok = now
        run.t_last_done = time.monotonic()


async def run_load(spec: LoadSpec, responder: Http01Responder, probe: CpuProbe,
                   log: Callable[[str], None]) -> RunResult:
    """Drive one target; always returns a RunResult (errors counted, stalls reported)."""
    mode = "duration" if spec.duration is not None else "count"
    requested = spec.duration if spec.duration is not None else float(spec.enrollments or 0)
    result = RunResult(spec.label, spec.concurrency, mode, requested, pinned=spec.pinned,
                       challenge=spec.challenge)
    counters = Counters()
    ssl_ctx = ssl.create_default_context(cafile=str(spec.ca_path))
    connector = aiohttp.TCPConnector(ssl=ssl_ctx, limit=0)
    timeout = aiohttp.ClientTimeout(total=spec.request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        try:
            async with session.get(spec.directory_url) as resp:
                directory = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            result.record_error("directory", repr(exc))
            return result
        clients = [AcmeClient(session, directory, counters) for _ in range(spec.concurrency)]
        outcomes = await asyncio.gather(*(c.new_account() for c in clients),
                                        return_exceptions=True)
        ready = []
        for client, outcome in zip(clients, outcomes):
            if isinstance(outcome, EnrollError):
                result.record_error(outcome.kind, outcome.text)
            elif isinstance(outcome, BaseException):
                result.record_error(f"newAccount:{type(outcome).__name__}", repr(outcome))
            else:
                ready.append(client)
        if not ready:
            result.notes.append("no account could be created")
            return result
        run = _Run(spec, result)
        await _drive(run, ready, responder, probe, counters, log)
    return result


async def _drive(run: _Run, clients: list[AcmeClient], responder: Http01Responder,
                 probe: CpuProbe, counters: Counters, log: Callable[[str], None]) -> None:
    spec, result = run.spec, run.result
    hits0, before = responder.hits, probe.sample()
    run.t_start = run.t_last_ok = time.monotonic()
    tasks = [asyncio.create_task(_worker(i, c, responder, run)) for i, c in enumerate(clients)]
    next_report, last_ok, t_end = run.t_start + spec.progress_interval, 0, run.t_start
    while True:
        await asyncio.sleep(0.1)
        now = time.monotonic()
        if all(t.done() for t in tasks):
            t_end = run.t_last_done
            break
        if spec.duration is not None and now >= run.t_start + spec.duration:
            t_end = run.t_start + spec.duration
            break
        if now - run.t_last_ok > spec.stall_timeout or now - run.t_start > spec.run_timeout:
            result.stalled = True
            t_end = run.t_last_ok
            why = ("no enrollment completed for" if now - run.t_last_ok > spec.stall_timeout
                   else "run exceeded")
            span = now - run.t_last_ok if why.startswith("no") else spec.run_timeout
            log(f"[{spec.label}] aborting: {why} {span:.0f}s")
            break
        if now >= next_report:
            elapsed = now - run.t_start
            recent = (result.ok - last_ok) / spec.progress_interval
            log(f"[{spec.label}] {elapsed:6.1f}s ok={result.ok:6d} err={result.errors:4d} "
                f"inflight={run.claimed - run.finished():3d} rate={result.ok / elapsed:7.1f}/s "
                f"now={recent:7.1f}/s")
            last_ok, next_report = result.ok, next_report + spec.progress_interval
    after = probe.sample()
    in_flight = run.claimed - run.finished()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if result.stalled and in_flight:
        for _ in range(in_flight):
            result.record_error("stalled", f"{in_flight} enrollments still in flight when the "
                                f"run was aborted (server deadlock or overload?)")
    elif in_flight:
        result.abandoned = in_flight
    result.elapsed_s = max(t_end - run.t_start, 1e-9)
    result.rate = result.ok / result.elapsed_s if result.ok else 0.0
    result.set_latencies(run.latencies)
    result.requests, result.nonce_retries = counters.requests, counters.nonce_retries
    _cpu_figures(result, probe, before, after, responder.hits - hits0)


def _cpu_figures(result: RunResult, probe: CpuProbe, a: CpuSample, b: CpuSample,
                 http01_fetches: int) -> None:
    wall = max(b.wall - a.wall, 1e-9)
    result.client_cpu_pct = (b.own - a.own) / wall * 100
    result.helper_cpu_pct = (b.helpers - a.helpers) / wall * 100
    if probe.server_pid:
        result.server_cpu_pct = (b.server - a.server) / wall * 100
    result.server_core_busy_pct = CpuProbe.core_busy_pct(a, b, probe.server_core)
    result.client_core_busy_pct = CpuProbe.core_busy_pct(a, b, probe.client_core)
    if result.ok:
        result.requests_per_enrollment = result.requests / result.ok
        if result.challenge == "http-01":
            result.http01_fetches_per_enrollment = http01_fetches / result.ok
    if result.client_core_busy_pct >= 90 and not result.server_core_busy_pct >= 90:
        result.notes.append("client core saturated: figure is a lower bound for the server")
