"""The artifacts directory: what ``segvol-rt export`` writes and every backend reads.

Layout::

    artifacts/
      manifest.json            this module's schema (FORMAT_VERSION)
      image_encoder.onnx       one file per graph, named by segvol_rt.io.spec
      text_encoder.onnx
      prompt_decoder.onnx
      text_table.npz           names (n,) str, embeddings (n, C) float32
      tokenizer/               the CLIP tokenizer files
      engines/                 TensorRT engines (added by ``segvol-rt build``)

``manifest.json`` holds ``format_version``, ``segvol_rt_version``,
``checkpoint`` {name, sha256, format}, ``config`` (SegVolConfig.to_dict()),
``prompt_template``, ``opset``, ``graphs`` {name: {file, sha256, spec,
operators, parity}}, ``tokenizer`` {dir, files: {name: sha256}},
``text_table`` {file, sha256, count}, ``versions`` and ``engines``
(filled by the TensorRT build; each entry with a ``file`` and ``sha256`` is
checked like the graphs). Paths in the manifest are relative to the
directory, with ``/`` separators.

Runtime code: numpy only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S
from segvol_rt.io.config import SegVolConfig

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TEXT_TABLE = "text_table.npz"
TOKENIZER_DIR = "tokenizer"
ENGINES_DIR = "engines"

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(root: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``root/manifest.json`` through a temporary file and a rename."""
    root = Path(root)
    target = root / MANIFEST
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the manifest is as readable as the graphs
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_manifest(root: str | Path) -> dict[str, Any]:
    """Parse ``root/manifest.json``; a clear :class:`SegVolError` for a missing
    directory, a missing or unparsable manifest, or an unsupported format."""
    root = Path(root)
    if not root.is_dir():
        raise SegVolError(f"artifacts directory {root} does not exist (create it with `segvol-rt export`)")
    path = root / MANIFEST
    if not path.is_file():
        raise SegVolError(f"{root} has no {MANIFEST}; it is not an artifacts directory (see `segvol-rt export`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SegVolError(f"{path} is not valid JSON ({exc}); export the artifacts again") from exc
    if not isinstance(data, dict):
        raise SegVolError(f"{path} does not hold a JSON object; export the artifacts again")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise SegVolError(
            f"{path}: format_version {version!r} is not supported by this segvol-rt "
            f"(expects {FORMAT_VERSION}); export the artifacts again with this version"
        )
    return data


class Artifacts:
    """A loaded artifacts directory.

    Attributes:
        root: the directory.
        manifest: the parsed manifest.json.
        config: the model's :class:`SegVolConfig`.
        specs: graph name -> :class:`segvol_rt.io.spec.GraphSpec`, as exported.
    """

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = root
        self.manifest = manifest
        try:
            self.config = SegVolConfig.from_dict(manifest["config"])
            self.specs = {name: S.spec_from_dict(g["spec"]) for name, g in manifest["graphs"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise SegVolError(f"{root / MANIFEST} is incomplete or malformed ({exc!r}); export again") from exc
        missing = [g for g in S.GRAPH_NAMES if g not in self.specs]
        if missing:
            raise SegVolError(f"{root / MANIFEST} lists no graph(s) {missing}; export again")

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> Artifacts:
        """Read the manifest of ``root`` (hashes are checked by :meth:`verify`)."""
        root = Path(root)
        return cls(root, read_manifest(root))

    # -- paths -------------------------------------------------------------
    @property
    def prompt_template(self) -> str:
        return str(self.manifest.get("prompt_template", self.config.prompt_template))

    def graph_path(self, name: str) -> Path:
        """Path of graph ``name`` (one of :data:`segvol_rt.io.spec.GRAPH_NAMES`)."""
        graphs = self.manifest["graphs"]
        if name not in graphs:
            raise SegVolError(f"no graph {name!r} in {self.root}; graphs: {sorted(graphs)}")
        return self.root / graphs[name]["file"]

    def tokenizer_dir(self) -> Path:
        return self.root / self.manifest.get("tokenizer", {}).get("dir", TOKENIZER_DIR)

    def files(self, engines: bool = True) -> Iterator[tuple[str, str]]:
        """Every (relative path, sha256) the manifest vouches for (engine files
        only with ``engines``)."""
        for g in self.manifest["graphs"].values():
            yield g["file"], g["sha256"]
        tok = self.manifest.get("tokenizer", {})
        for name, digest in tok.get("files", {}).items():
            yield f"{tok.get('dir', TOKENIZER_DIR)}/{name}", digest
        table = self.manifest.get("text_table")
        if table:
            yield table["file"], table["sha256"]
        for entry in (self.manifest.get("engines") or {}).values() if engines else ():
            if isinstance(entry, dict) and "file" in entry and "sha256" in entry:
                yield entry["file"], entry["sha256"]

    # -- checks ------------------------------------------------------------
    def verify(self, engines: bool = True) -> None:
        """Check the sha256 of every file against the manifest (TensorRT engine
        files too, unless ``engines`` is False); raise :class:`SegVolError`
        naming the first missing or changed file."""
        for rel, digest in self.files(engines):
            path = self.root / rel
            if not path.is_file():
                raise SegVolError(f"{path} is listed in {MANIFEST} but missing; export the artifacts again")
            actual = sha256_file(path)
            if actual != digest:
                raise SegVolError(
                    f"{path} does not match {MANIFEST} (sha256 {actual[:12]}..., expected {digest[:12]}...); "
                    "the file was changed or damaged - export the artifacts again"
                )

    # -- contents ----------------------------------------------------------
    def tokenizer(self) -> Any:
        """The CLIP tokenizer of these artifacts (:class:`segvol_rt.io.tokenizer.ClipTokenizer`)."""
        from segvol_rt.io.tokenizer import ClipTokenizer

        return ClipTokenizer.from_dir(self.tokenizer_dir())

    def text_table(self) -> tuple[list[str], np.ndarray]:
        """Vocabulary names and their text embeddings (n, C) float32, in the
        order of :data:`segvol_rt.io.vocabulary.CATEGORIES` at export time."""
        entry = self.manifest.get("text_table")
        if not entry:
            raise SegVolError(f"{self.root} has no text embedding table")
        path = self.root / entry["file"]
        if not path.is_file():
            raise SegVolError(f"{path} is listed in {MANIFEST} but missing; export the artifacts again")
        with np.load(path, allow_pickle=False) as data:
            names = [str(n) for n in data["names"]]
            table = np.ascontiguousarray(data["embeddings"], dtype=np.float32)
        if table.shape != (len(names), self.config.embed_dim) or len(names) != entry.get("count", len(names)):
            raise SegVolError(
                f"{path}: table shape {table.shape} for {len(names)} names does not fit "
                f"embed_dim {self.config.embed_dim} / count {entry.get('count')}; export again"
            )
        return names, table

    # -- updates -----------------------------------------------------------
    def update(self, **sections: Any) -> None:
        """Replace top-level manifest sections (e.g. ``engines=...``) and
        rewrite manifest.json atomically."""
        self.manifest.update(sections)
        write_manifest(self.root, self.manifest)
