"""Test support: the independent DICOM tools, installed the way ``.ci/run`` does
(``.ci/setup-dicom.sh``), and a real Orthanc PACS on 127.0.0.1.

* :func:`ensure_tools` runs the setup script once per session; the tests skip,
  with its output as the reason, only when it cannot install.
* :func:`dciodvfy` returns the error lines of dicom3tools' validator.
* :func:`dcmqi_segments` decodes a SEG with dcmqi's ``segimage2itkimage`` into
  world-coordinate voxel centres per segment.
* :class:`Orthanc` runs ``Orthanc`` with the DICOMweb plugin, its own
  temporary storage and configuration, a free port, remote access disabled
  (Orthanc 1.10 has no HTTP bind-address option: it listens on every
  interface but refuses any client that is not loopback), its DICOM (DIMSE)
  server off and HTTP basic authentication; the tests talk to it on
  127.0.0.1 only; bounded waits.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / ".ci" / "setup-dicom.sh"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@lru_cache(maxsize=1)
def _setup() -> str | None:
    """None when the tools are there after the setup script, else why not."""
    try:
        proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SETUP.name} could not run: {exc}"
    if proc.returncode != 0:
        return f"{SETUP.name} failed: {(proc.stderr or proc.stdout).strip()[-300:]}"
    return None


def ensure_tools(*names: str) -> None:
    """Install the DICOM tools (once) and skip the test when ``names`` are still missing."""
    reason = _setup()
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(reason or f"{', '.join(missing)} not found after {SETUP.name}")


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's ``Error`` lines for ``path`` (an empty list: valid)."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def _segimage2itkimage() -> str:
    exe = shutil.which("segimage2itkimage") or str(Path(sys.executable).with_name("segimage2itkimage"))
    if not Path(exe).exists():
        pytest.skip("dcmqi's segimage2itkimage is not installed (pip install dcmqi; the dev extra has it)")
    return exe


def dcmqi_segments(seg: Path, out: Path) -> dict[str, set[tuple[float, float, float]]]:
    """Decode ``seg`` with dcmqi: {segment label: set of voxel centres (RAS mm, rounded to 0.01)}."""
    import nibabel as nib

    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([_segimage2itkimage(), "--inputDICOM", str(seg), "--outputDirectory", str(out),
                           "--outputType", "nifti"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"segimage2itkimage failed: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    meta = json.loads((out / "meta.json").read_text())
    result: dict[str, set[tuple[float, float, float]]] = {}
    for n, group in enumerate(meta["segmentAttributes"], start=1):
        img = nib.load(out / f"{n}.nii.gz")
        data = np.asanyarray(img.dataobj)
        for attrs in group:
            ijk = np.argwhere(data == attrs["labelID"])
            result[attrs["SegmentLabel"]] = world_set(ijk, img.affine)
    return result


def dcmqi_levels(seg: Path, out: Path) -> dict[tuple[float, float, float], int]:
    """Decode a one-segment FRACTIONAL ``seg`` with dcmqi: {voxel centre (RAS mm, 0.01): stored level 1..255}."""
    import nibabel as nib

    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([_segimage2itkimage(), "--inputDICOM", str(seg), "--outputDirectory", str(out),
                           "--outputType", "nifti"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"segimage2itkimage failed: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    img = nib.load(out / "1.nii.gz")
    data = np.asanyarray(img.dataobj)
    ijk = np.argwhere(data > 0)
    return world_levels(ijk, data[tuple(ijk.T)], img.affine)


def world_levels(ijk: np.ndarray, levels: np.ndarray, affine: np.ndarray) -> dict[tuple[float, float, float], int]:
    xyz = ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return {tuple(p): int(v) for p, v in zip(np.round(xyz, 2).tolist(), levels.tolist())}


def world_set(ijk: np.ndarray, affine: np.ndarray) -> set[tuple[float, float, float]]:
    """Voxel indices ``(n, 3)`` -> set of world points rounded to 0.01 mm."""
    xyz = ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return {tuple(p) for p in np.round(xyz, 2).tolist()}


# -- Orthanc ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Orthanc:
    """A throwaway Orthanc with DICOMweb on 127.0.0.1 (see the module docstring)."""

    USER, PASSWORD = "segvol", "rt-test-secret"

    def __init__(self, root: Path, dicomweb: dict[str, object] | None = None):
        self.root = root
        self.dicomweb_options = dict(dicomweb or {})  # more "DicomWeb" settings (e.g. StudiesMetadata: Full)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = root / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> str:
        return f"{self.USER}:{self.PASSWORD}"

    def _config(self) -> Path:
        config = {
            "Name": "segvol-rt-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,  # DICOMweb only: no DIMSE listener at all
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.USER: self.PASSWORD},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", **self.dicomweb_options},
            "HttpTimeout": 60,
            "StableAge": 1,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self, timeout: float = 30.0) -> None:
        exe = shutil.which("Orthanc")
        if exe is None or not DICOMWEB_PLUGIN.exists():
            pytest.skip("Orthanc or its DICOMweb plugin is not installed")
        (self.root / "storage").mkdir(parents=True, exist_ok=True)
        log = open(self.log, "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([exe, str(self._config())], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"Orthanc did not answer within {timeout}s: {self.log.read_text()[-2000:]}")

    def _request(self, path: str, data: bytes | None = None, content_type: str | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET")
        req.add_header("Authorization", "Basic " + b64encode(self.auth.encode()).decode())
        if content_type:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback test server
            return resp.read()

    def get(self, path: str) -> object:
        return json.loads(self._request(path))

    def upload(self, files: list[Path]) -> None:
        for f in files:
            self._request("/instances", f.read_bytes(), "application/dicom")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
        self.proc = None
