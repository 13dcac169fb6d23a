"""Test support: the OHIF viewer (npm ``@ohif/app``'s built ``dist/``) served by
nginx on 127.0.0.1 beside a same-origin reverse proxy to a test Orthanc's
DICOMweb, and Debian's headless Chromium driven by npm ``playwright-core``
(``tests/support/ohif_drive.cjs``).

* :func:`ensure_ohif` runs ``.ci/setup-ohif.sh`` once per session and skips the
  test, with the script's output as the reason, only when it cannot install.
* :class:`OhifServer` writes the app config (one ``dicomweb`` data source at
  ``/dicom-web``, no confirmation prompts, no onboarding tours) and the nginx
  config (SPA fallback to ``index.html``; ``/dicom-web/`` proxied to Orthanc
  with ``Host $http_host`` - Orthanc builds its BulkDataURI links from it -
  and Orthanc's basic-auth header added by the proxy, so the browser never
  holds the credentials).
* :func:`drive` runs the Node driver on one viewer URL and returns what it
  saw (study browser series, segmentation panel rows, overlay probe, screenshots).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from base64 import b64encode
from functools import lru_cache
from pathlib import Path

import pytest

from tests.support.dicom_tools import Orthanc, free_port
from tests.support.serving import ServingUnavailable, nginx_binary

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / ".ci" / "setup-ohif.sh"
VERSIONS = ROOT / ".ci" / "ohif-versions.env"
DRIVER = Path(__file__).with_name("ohif_drive.cjs")
CHROMIUM = "/usr/bin/chromium"


def versions() -> dict[str, str]:
    """OHIF_VERSION and PLAYWRIGHT_CORE_VERSION, as .ci/setup-ohif.sh installs them."""
    out = {}
    for line in VERSIONS.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def cache() -> Path:
    return Path(os.environ.get("SEGVOL_OHIF_CACHE", Path.home() / ".cache" / "segvol-rt"))


def ohif_dist() -> Path:
    return cache() / f"ohif-{versions()['OHIF_VERSION']}" / "dist"


def playwright_dir() -> Path:
    return cache() / f"playwright-core-{versions()['PLAYWRIGHT_CORE_VERSION']}" / "node_modules"


@lru_cache(maxsize=1)
def _setup() -> str | None:
    try:
        proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=1200)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SETUP.name} could not run: {exc}"
    if proc.returncode != 0:
        return f"{SETUP.name} failed: {(proc.stderr or proc.stdout).strip()[-300:]}"
    return None


def ensure_ohif() -> None:
    """Install chromium, playwright-core and the OHIF viewer (once); skip when they are still missing."""
    reason = _setup()
    if reason or not (ohif_dist() / "index.html").is_file() or not Path(CHROMIUM).exists():
        pytest.skip(reason or f"OHIF or chromium missing after {SETUP.name}")
    try:
        nginx_binary()
    except ServingUnavailable as exc:
        pytest.skip(str(exc))


def chromium_version() -> str:
    proc = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=60)
    return proc.stdout.strip()


APP_CONFIG = """window.config = {
  routerBasename: null,
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  disableConfirmationPrompts: true,
  tours: [],
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'segvol-rt test Orthanc',
        name: 'orthanc',
        wadoUriRoot: '/dicom-web',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
"""

NGINX = """daemon off;
{user}worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    types {{ application/wasm wasm; }}
    access_log {work}/access.log;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {dist};
        location = /app-config.js {{ alias {work}/app-config.js; }}
        location /dicom-web/ {{
            proxy_pass http://127.0.0.1:{orthanc_port};
            proxy_set_header Host $http_host;
            proxy_set_header Authorization "Basic {auth}";
            proxy_read_timeout 120s;
            proxy_buffering off;
        }}
        location / {{ try_files $uri $uri/ /index.html; }}
    }}
}}
"""


class OhifServer:
    """nginx on 127.0.0.1 serving OHIF and proxying ``/dicom-web/`` to ``orthanc``."""

    def __init__(self, orthanc: Orthanc, work: Path):
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (work / "app-config.js").write_text(APP_CONFIG)
        auth = b64encode(orthanc.auth.encode()).decode()
        self.conf = work / "nginx.conf"
        # as root, nginx's workers default to an unprivileged user that cannot read the cache under /root
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.conf.write_text(NGINX.format(user=user, work=work, port=self.port, dist=ohif_dist(),
                                          orthanc_port=orthanc.port, auth=auth))
        binary = nginx_binary()
        check = subprocess.run([binary, "-t", "-c", str(self.conf), "-p", str(work)], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise AssertionError(f"nginx -t failed: {check.stderr}")
        self.proc = subprocess.Popen([binary, "-c", str(self.conf), "-p", str(work)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url + "/index.html", timeout=5) as resp:  # noqa: S310
                if resp.status == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"nginx did not serve OHIF within 30 s: {(work / 'error.log').read_text()[-2000:]}")

    def viewer_url(self, study_uid: str, seg_series_uid: str) -> str:
        """The viewer on ``study_uid`` with the SEG series ``seg_series_uid`` loaded onto its CT."""
        return f"{self.url}/viewer?StudyInstanceUIDs={study_uid}&initialSeriesInstanceUID={seg_series_uid}"

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def drive(jobs: list[dict[str, object]], out: Path, timeout: float = 300.0) -> list[dict[str, object]]:
    """Run the Node driver over ``jobs`` (each: ``url``, ``name``, ``segments`` labels) in one browser;
    screenshots go to ``out``. Returns one report per job (see ohif_drive.cjs)."""
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "jobs.json"
    spec.write_text(json.dumps({"chromium": CHROMIUM, "out": str(out), "jobs": jobs}))
    env = {**os.environ, "NODE_PATH": str(playwright_dir())}
    proc = subprocess.run(["node", str(DRIVER), str(spec)], capture_output=True, text=True, timeout=timeout, env=env)
    (out / "driver.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise AssertionError(f"the OHIF driver failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads((out / "report.json").read_text())
