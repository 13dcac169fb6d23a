"""Real `segvol-rt serve` processes (and nginx) for the serving tests, on 127.0.0.1 only.

The server runs in its own venv (PyTriton needs numpy<2; the suite runs on
numpy 2): ``$SEGVOL_SERVE_VENV`` or ``~/.cache/segvol-rt/serve-venv``, made by
``.ci/setup-serve.sh`` - which :func:`serve_venv` runs itself when the venv is
missing, as CI does. Every wait is bounded; every process is started in a
process group of its own and ended by its id (tritonserver, PyTriton's
child, goes with it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / ".ci" / "setup-serve.sh"
NGINX_TEMPLATE = REPO / "deploy" / "nginx" / "segvol-sticky.conf.template"
DEMO_ARTIFACTS = REPO / "segvol_rt" / "assets" / "demo" / "artifacts"
START_TIMEOUT_S = 120.0


class ServingUnavailable(RuntimeError):
    """The serve venv or nginx could not be had (the tests skip with this reason)."""


def serve_venv() -> Path:
    """The serve venv, made by .ci/setup-serve.sh when absent or stale."""
    venv = Path(os.environ.get("SEGVOL_SERVE_VENV", Path.home() / ".cache" / "segvol-rt" / "serve-venv"))
    done = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=1200)
    if done.returncode != 0 or not (venv / "bin" / "segvol-rt").exists():
        raise ServingUnavailable(f".ci/setup-serve.sh failed ({done.returncode}): {done.stderr[-500:]}")
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except Exception:  # noqa: BLE001 - not up yet
        return 0


class ServerProcess:
    """``segvol-rt serve`` on 127.0.0.1 with free ports; ``url`` once started."""

    def __init__(self, venv: Path, log_dir: Path, args: Sequence[str] = (), artifacts: Path = DEMO_ARTIFACTS,
                 env: dict[str, str] | None = None):
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log_path = log_dir / f"serve-{self.http_port}.log"
        cmd = [str(venv / "bin" / "segvol-rt"), "serve", "--artifacts", str(artifacts), "--host", "127.0.0.1",
               "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port), *args]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {k: v for k, v in os.environ.items() if k != "SEGVOL_API_KEY"}  # keys only as the test gives them
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, env=full_env)

    @classmethod
    def started(cls, venv: Path, log_dir: Path, args: Sequence[str] = (), artifacts: Path = DEMO_ARTIFACTS,
                env: dict[str, str] | None = None, timeout_s: float = START_TIMEOUT_S, attempts: int = 3) -> ServerProcess:
        """A ready server, started again with fresh ports when a start fails: a port
        taken between :func:`free_port` and the server's bind by another process on
        the machine, or PyTriton's start-up handshake with Triton's Python stubs
        refused (seen once here, right after another server's shutdown)."""
        for attempt in range(attempts):
            proc = cls(venv, log_dir, args, artifacts, env)
            try:
                proc.wait_ready(timeout_s)
                return proc
            except RuntimeError:
                proc.stop()
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until Triton and the three models are ready (bounded)."""
        deadline = time.monotonic() + timeout_s
        models = ("segvol_open", "segvol_segment", "segvol_close")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"segvol-rt serve exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            if _get(f"{self.url}/v2/health/ready") == 200 and all(
                _get(f"{self.url}/v2/models/{m}/ready") == 200 for m in models
            ):
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"segvol-rt serve not ready after {timeout_s:.0f} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_bytes(self) -> int:
        """Resident memory of the serving Python process (where the sessions live)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def kill(self) -> None:
        """SIGKILL the server's process group (a crash: nothing is cleaned up)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (PyTriton stops Triton), SIGKILL of the group after ``timeout_s``."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # tritonserver, should it outlive its parent
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.close()


def _post(url: str, body: bytes, timeout: float = 30.0) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except Exception as exc:  # noqa: BLE001 - not listening yet
        return 0, str(exc)


def poll_from_start(proc: ServerProcess, after_ready_s: float = 3.0, timeout_s: float = START_TIMEOUT_S) -> list[tuple[float, int, int]]:
    """From the moment ``proc`` started: ``/v2/health/ready`` polled, and each
    time it answers, a request to every served model issued right after
    (only ``session``: ``close`` answers with a session error, the others with
    Triton's missing-input error, none with 404 once loaded).
    ``(seconds, ready status, request status)`` rows (0: nothing listens; -1:
    no request), until ``after_ready_s`` past the first "ready"."""
    body = json.dumps({"inputs": [{"name": "session", "shape": [1], "datatype": "BYTES", "data": ["0" * 32]}]}).encode()
    t0, first, rows = time.monotonic(), None, []
    while time.monotonic() - t0 < timeout_s and (first is None or time.monotonic() - first < after_ready_s):
        if proc.proc.poll() is not None:
            raise RuntimeError(f"segvol-rt serve exited ({proc.proc.returncode}):\n{proc.log()[-3000:]}")
        ready = _get(f"{proc.url}/v2/health/ready", timeout=5.0)
        if ready != 200:
            rows.append((time.monotonic() - t0, ready, -1))
            time.sleep(0.02)
            continue
        first = first or time.monotonic()
        for model in ("segvol_close", "segvol_segment", "segvol_open"):
            status, text = _post(f"{proc.url}/v2/models/{model}/infer", body)
            rows.append((time.monotonic() - t0, ready, status))
            if model == "segvol_close" and status != 404:
                assert "segvol_rt.error[session]" in text, text[:500]  # our handler answered (the others lack inputs)
    return rows


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise ServingUnavailable("nginx is not installed (.ci/setup-serve.sh installs it)")
    return found


class NginxRouter:
    """nginx on 127.0.0.1 with deploy/'s sticky template over ``upstreams`` (host:port)."""

    def __init__(self, upstreams: Sequence[str], work: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        work.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=30s;" for u in upstreams)
        conf = string.Template(NGINX_TEMPLATE.read_text()).safe_substitute(
            LISTEN=f"127.0.0.1:{self.port}", UPSTREAM_SERVERS=servers.strip(), RUN_DIR=str(work))
        self.conf = work / "nginx.conf"
        self.conf.write_text("daemon off;\nworker_processes 1;\n" f"pid {work}/nginx.pid;\nerror_log {work}/error.log warn;\n{conf}")
        binary = nginx_binary()
        check = subprocess.run([binary, "-t", "-c", str(self.conf), "-p", str(work)], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed: {check.stderr}")
        self.proc = subprocess.Popen([binary, "-c", str(self.conf), "-p", str(work)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _get(f"{self.url}/v2/health/live") != 200:
            time.sleep(0.2)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
