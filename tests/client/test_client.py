"""The torch-free client without a server: what it imports, and how it reads a
served error (tests/serve/ runs a real server)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from segvol_rt import wire as W


def test_the_client_reads_a_version_error_as_one_line() -> None:
    pytest.importorskip("tritonclient.http")
    from segvol_rt.client import SegVolClient

    class _Refused(Exception):
        def message(self) -> str:
            return "Model execute error: " + W.error_text("version", "the client speaks wire version 0, this server 1") + "\nAt:"

        def status(self) -> str:
            return "400"

    err = SegVolClient("http://127.0.0.1:1")._error(_Refused(), "0" * 32, W.OPEN_MODEL)
    assert isinstance(err, W.VersionMismatch)
    assert str(err) == "segvol-rt server at http://127.0.0.1:1: the client speaks wire version 0, this server 1"


def test_the_client_imports_no_runtime() -> None:
    code = ("import sys, segvol_rt.client, segvol_rt.client.client, segvol_rt.wire, segvol_rt.types\n"
            "print([m for m in sys.modules if m in ('segvol_rt.runtime', 'segvol_rt.serve', 'segvol_rt.backends')"
            " or m.startswith(('segvol_rt.runtime.', 'segvol_rt.serve.', 'segvol_rt.backends.'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
