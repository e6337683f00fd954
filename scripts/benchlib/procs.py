"""Process plumbing shared by the server launchers: ports, CPU pinning, readiness, CPU accounting."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


class ServerStartError(RuntimeError):
    """The server under test did not come up; the message carries its log tail."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (tiny race window; fine for a benchmark)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def can_pin() -> bool:
    """Pinning needs taskset and at least two CPUs this process may use."""
    return shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) >= 2


def cpu_split() -> tuple[int, int]:
    """(server core, load-generator core): the first two CPUs available to us."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[0], cpus[1]


def pin_self(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class ServerHandle:
    """A running server under test. `procs[0]` is the server itself (used for CPU accounting)."""

    name: str
    directory_url: str
    ca_path: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_paths: list[Path] = field(default_factory=list)

    @property
    def server_pid(self) -> int:
        return self.procs[0].pid

    def logs(self, lines: int = 25) -> str:
        return "\n".join(f"--- {p}\n{log_tail(p, lines)}" for p in self.log_paths)

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)


def spawn(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None, cpu: int | None = None
) -> subprocess.Popen[bytes]:
    """Start argv with stdout+stderr to log_path, under `taskset -c cpu` when cpu is given."""
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


def wait_https(
    url: str, ca_path: Path, procs: list[subprocess.Popen[bytes]], timeout: float,
    what: str, logs: list[Path],
) -> None:
    """Poll url until it answers 200 (verifying against ca_path, which may appear late)."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                tails = "\n".join(f"--- {p}\n{log_tail(p)}" for p in logs)
                raise ServerStartError(f"{what} exited with {proc.returncode}\n{tails}")
        if ca_path.exists():
            try:
                ctx = ssl.create_default_context(cafile=str(ca_path))
                with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except (OSError, urllib.error.URLError, ssl.SSLError) as exc:
                last = repr(exc)
        time.sleep(0.1)
    tails = "\n".join(f"--- {p}\n{log_tail(p)}" for p in logs)
    raise ServerStartError(f"{what} not ready at {url} after {timeout}s ({last})\n{tails}")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                kids.extend(int(k) for k in fh.read().split())
    except OSError:
        pass
    return kids


def tree_cpu_seconds(pid: int) -> float:
    """user+system CPU of pid and its live descendants (from /proc), in seconds."""
    total, todo, seen = 0.0, [pid], set()
    while todo:
        cur = todo.pop()
        if cur in seen:
            continue
        seen.add(cur)
        try:
            with open(f"/proc/{cur}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            continue
        todo.extend(_children(cur))
    return total


def core_busy_ticks(cpus: list[int]) -> dict[int, tuple[int, int]]:
    """{cpu: (busy ticks, total ticks)} from /proc/stat (busy = total - idle - iowait)."""
    out: dict[int, tuple[int, int]] = {}
    wanted = {f"cpu{c}": c for c in cpus}
    with open("/proc/stat") as fh:
        for line in fh:
            fields = line.split()
            if fields and fields[0] in wanted:
                values = [int(v) for v in fields[1:9]]
                total = sum(values)
                out[wanted[fields[0]]] = (total - values[3] - values[4], total)
    return out


@dataclass
class CpuSample:
    own: float
    server: float
    helpers: float
    cores: dict[int, tuple[int, int]]
    wall: float


class CpuProbe:
    """Snapshots CPU use of this process, the server tree, helper processes and the pinned cores."""

    def __init__(self, server_pid: int | None, helper_pids: list[int],
                 server_core: int | None, client_core: int | None) -> None:
        self.server_pid = server_pid
        self.helper_pids = helper_pids
        self.server_core = server_core
        self.client_core = client_core

    def sample(self) -> CpuSample:
        usage = os.times()
        cores = [c for c in (self.server_core, self.client_core) if c is not None]
        return CpuSample(
            own=usage.user + usage.system,
            server=tree_cpu_seconds(self.server_pid) if self.server_pid else 0.0,
            helpers=sum(tree_cpu_seconds(p) for p in self.helper_pids),
            cores=core_busy_ticks(cores) if cores else {},
            wall=time.monotonic(),
        )

    @staticmethod
    def core_busy_pct(a: CpuSample, b: CpuSample, cpu: int | None) -> float:
        if cpu is None or cpu not in a.cores or cpu not in b.cores:
            return float("nan")
        busy = b.cores[cpu][0] - a.cores[cpu][0]
        total = b.cores[cpu][1] - a.cores[cpu][1]
        return 100.0 * busy / total if total > 0 else float("nan")
