"""The records of checked files (segvol_rt.io.digests): a load hashes a graph version once,
and a file whose bytes changed never passes on an old record; a manifest's bytes pass
the JSON Schema once."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from segvol_rt.errors import SegVolError
from segvol_rt.io import artifacts as A
from segvol_rt.io import digests

from .test_artifacts import _make


@pytest.fixture
def records(tmp_path, monkeypatch) -> Path:
    """This test's own records folder, and no racy window (a test's files are all new)."""
    monkeypatch.setenv("SEGVOL_RT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(digests, "RACY_SECONDS", 0)
    return tmp_path / "cache" / digests.RECORDS_DIR


def _counting(monkeypatch) -> list[str]:
    hashed: list[str] = []
    real = digests.sha256_file
    monkeypatch.setattr(digests, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    return hashed


def _past_clock_tick() -> None:
    """Let the file system's clock move on, so a write now gets other times than the last one
    (the racy window covers this in use; the tests set it to 0)."""
    time.sleep(0.05)


def test_a_checked_file_is_not_hashed_again_by_the_next_load(tmp_path, records, monkeypatch):
    root = _make(tmp_path / "art")
    hashed = _counting(monkeypatch)
    A.Artifacts.load(root).verify_files(A.Artifacts.load(root).graph_files())
    assert len(hashed) == 3 and len(list(records.iterdir())) == 3
    assert all(f.stat().st_size == 0 for f in records.iterdir())
    A.Artifacts.load(root).verify_files(A.Artifacts.load(root).graph_files())  # another process's load
    assert len(hashed) == 3


@pytest.mark.parametrize("change", ["same size, times put back", "replaced by a copy", "appended"])
def test_a_changed_file_is_hashed_and_refused_despite_its_record(tmp_path, records, change):
    root = _make(tmp_path / "art")
    A.Artifacts.load(root).verify()
    graph = root / "image_encoder.onnx"
    st = graph.stat()
    _past_clock_tick()
    if change == "same size, times put back":
        data = bytearray(graph.read_bytes())
        data[-1] ^= 1
        with open(graph, "r+b") as f:
            f.write(data)
        os.utime(graph, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert graph.stat().st_mtime_ns == st.st_mtime_ns and graph.stat().st_size == st.st_size
    elif change == "replaced by a copy":
        damaged = tmp_path / "damaged"
        damaged.write_bytes(graph.read_bytes()[:-1] + b"\0")
        os.utime(damaged, ns=(st.st_atime_ns, st.st_mtime_ns))
        damaged.replace(graph)
    else:
        with open(graph, "ab") as f:
            f.write(b"\0")
    with pytest.raises(SegVolError, match="image_encoder.onnx does not match manifest.json"):
        A.Artifacts.load(root).verify()


def test_a_file_changed_within_the_racy_window_gets_no_record(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGVOL_RT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "new.bin"
    path.write_bytes(b"x" * 100)
    digest = digests.hash_and_record(path)  # RACY_SECONDS (2): written just now
    assert digest == digests.sha256_file(path)
    assert not digests.is_recorded(path, digest) and not digests.records_dir().exists()


def test_a_record_says_which_digest_the_file_had(tmp_path, records):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    digest = digests.hash_and_record(path)
    assert digests.is_recorded(path, digest)
    assert not digests.is_recorded(path, "0" * 64)  # another manifest's digest: hashed again


def test_a_cache_that_cannot_hold_records_only_costs_time(tmp_path, records, monkeypatch):
    records.parent.mkdir(parents=True)
    records.write_text("a file where the folder would be")
    root = _make(tmp_path / "art")
    hashed = _counting(monkeypatch)
    for _ in range(2):
        A.Artifacts.load(root).verify()
    assert len(hashed) == 2 * len(list(A.Artifacts.load(root).files()))
    assert records.read_text() == "a file where the folder would be"


def test_a_link_is_neither_a_record_nor_followed_when_recording(tmp_path, records):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    digest = digests.sha256_file(path)
    name = digests.record_name(path.stat(), digest)
    records.mkdir(parents=True)
    target = tmp_path / "elsewhere"
    (records / name).symlink_to(target)
    assert not digests.is_recorded(path, digest)
    digests.hash_and_record(path)
    assert not target.exists() and not digests.is_recorded(path, digest)


def _valid_manifests(tmp_path) -> list[str]:
    folder = tmp_path / "cache" / A.VALID_MANIFESTS_DIR
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _counting_checks(monkeypatch) -> list[str]:
    """The manifests checked against the schema from now on, by path."""
    checked: list[str] = []
    real = A.validate_manifest
    monkeypatch.setattr(A, "validate_manifest", lambda data, path: checked.append(str(path)) or real(data, path))
    return checked


def test_a_manifest_that_passed_the_schema_is_not_checked_again(tmp_path, records, monkeypatch):
    """The second read of the same bytes neither imports jsonschema nor checks: it passed before."""
    root = _make(tmp_path / "art")
    assert _valid_manifests(tmp_path) == []
    A.read_manifest(root)
    assert len(_valid_manifests(tmp_path)) == 1
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # any check now would fail
    assert A.read_manifest(root)["format_version"] == A.FORMAT_VERSION
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    (elsewhere / A.MANIFEST).write_bytes((root / A.MANIFEST).read_bytes())
    A.read_manifest(elsewhere)  # the record is the bytes', wherever they are


def test_a_changed_manifest_is_checked_again(tmp_path, records):
    root = _make(tmp_path / "art")
    A.read_manifest(root)
    manifest = json.loads((root / A.MANIFEST).read_text())
    manifest["graphs"]["image_encoder"]["sha256"] = "not a digest"
    A.write_manifest(root, manifest)
    with pytest.raises(SegVolError, match="/graphs/image_encoder/sha256"):
        A.read_manifest(root)
    with pytest.raises(SegVolError, match="/graphs/image_encoder/sha256"):
        A.read_manifest(root)  # a manifest the schema refused leaves no record
    assert len(_valid_manifests(tmp_path)) == 1


def test_a_manifest_record_holds_for_its_schema_only(tmp_path, records, monkeypatch):
    root = _make(tmp_path / "art")
    A.read_manifest(root)
    monkeypatch.setattr(A, "_schema_sha256", lambda: "0" * 64)  # another segvol-rt's schema
    checked = _counting_checks(monkeypatch)
    A.read_manifest(root)
    assert checked == [str(root / A.MANIFEST)] and len(_valid_manifests(tmp_path)) == 2


def test_a_manifest_record_is_a_regular_file_or_none(tmp_path, records, monkeypatch):
    """A link where the record would be is no record, and is not followed when recording."""
    root = _make(tmp_path / "art")
    record = A._valid_manifest_record((root / A.MANIFEST).read_bytes())
    record.parent.mkdir(parents=True)
    target = tmp_path / "elsewhere"
    record.symlink_to(target)
    checked = _counting_checks(monkeypatch)
    A.read_manifest(root)
    A.read_manifest(root)
    assert len(checked) == 2 and not target.exists()
