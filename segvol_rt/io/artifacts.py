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
operators, parity, variants}}, ``tokenizer`` {dir, files: {name: sha256}},
``text_table`` {file, sha256, count}, ``voxel_orientation`` (optional),
``versions`` and ``engines``
(filled by the TensorRT build; each entry with a ``file`` and ``sha256`` is
checked like the graphs). A graph's optional ``variants`` {precision: {file,
sha256, operators, tensorrt_check, parity, conversion}} lists the reduced
precision copies of it (``export --precision fp16``: ``"fp16"``, a graph of
the same IO whose parity is measured against the fp32 graph); the graph's own
``file`` is the fp32 reference. Paths in the manifest are relative to the
directory, with ``/`` separators, and never leave it.

Validation, when the manifest is read (every failure one :class:`SegVolError`
line naming ``manifest.json`` and the JSON pointer of the bad field):

1. ``format_version`` must be one this reader knows (:data:`SUPPORTED_FORMATS`);
2. the JSON Schema shipped beside this module (``manifest.schema.json``, draft
   2020-12; :func:`manifest_schema`), which the C++ SDK checks as well;
3. what a schema cannot say: the config builds a :class:`SegVolConfig`, and
   each graph's spec has the names, dtypes, axes and fixed sizes that config
   implies (an ``embed_dim`` that disagrees with the graphs is caught here),
   with a ``[min, opt, max]`` range for every dynamic axis.

The graphs themselves are checked against their specs when a backend opens
them (:func:`segvol_rt.backends.onnxruntime.check_session_io`), and the text
table when it is read (:meth:`Artifacts.text_table`).

Format versions. Changes stay additive: a new field is optional, and readers
accept fields they do not know (except inside ``config``, which must be
understood in full); a field that becomes required, or a change of meaning,
bumps ``format_version``, and this reader keeps accepting every older version
it lists in :data:`SUPPORTED_FORMATS`.

* 1: the first format (this module's layout above); graph ``variants`` were
  added later, as an optional field (artifacts without them have fp32 graphs only);
  so was ``voxel_orientation``: the axis codes (e.g. ``"RAS"``) of the voxel
  order the model was trained on. The runtime reorients each scan to it and
  maps the masks back; absent (SegVol's own weights, trained on each data
  set's stored order): the scan's stored voxel order, unchanged.

Runtime code: numpy; jsonschema is imported when a manifest is read whose
bytes never passed the schema on this machine: one that did leaves a record in
segvol-rt's user cache (``valid-manifests/``, named by the digests of the
manifest's bytes and of the schema; :mod:`segvol_rt.io.digests`), and a later
read of the same bytes takes it as checked. jsonschema's import and check were
0.15-0.2 s of each one-shot ``segvol-rt infer`` (2-core EPYC). The records hold no
more trust than the cache's compiled models; a cache that cannot be written
only means every read checks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt._optional import require
from segvol_rt._system import cpu_cores
from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S
from segvol_rt.io.config import SegVolConfig
from segvol_rt.io.digests import content_record, has_record, hash_and_record, is_recorded, write_record

FORMAT_VERSION = 1
# Every format_version this reader accepts (see the module docstring).
SUPPORTED_FORMATS = (1,)
MANIFEST = "manifest.json"
SCHEMA = "manifest.schema.json"
# The user cache's folder of manifests that passed the schema, and the check's name in
# their records (a change of what a record means changes it).
VALID_MANIFESTS_DIR = "valid-manifests"
VALID_MANIFEST_CHECK = "segvol-rt-valid-manifest/1"
TEXT_TABLE = "text_table.npz"
TOKENIZER_DIR = "tokenizer"
ENGINES_DIR = "engines"
# Graph variants: "fp32" is each graph's own file, the others its ``variants``.
GRAPH_VARIANTS = ("fp32", "fp16")
# What a backend computes in (``--precision``): a graph variant on ONNX Runtime
# and TensorRT; on OpenVINO the inference precision of the fp32 graphs (bf16).
PRECISIONS = (*GRAPH_VARIANTS, "bf16")
REFERENCE_PRECISION = "fp32"

# Axis codes of a voxel orientation: one letter of each pair L/R, A/P, S/I (nibabel's codes).
ORIENTATION_PATTERN = r"^(?=.*[LR])(?=.*[AP])(?=.*[SI])[LRAPSI]{3}$"


def check_orientation(codes: str) -> str:
    """``codes`` upper-cased if they are three axis codes such as ``RAS`` or ``LPS``, else a :class:`SegVolError`."""
    import re

    upper = codes.strip().upper() if isinstance(codes, str) else ""
    if not re.match(ORIENTATION_PATTERN, upper):
        raise SegVolError(f"orientation must be three axis codes, one of L/R, A/P and S/I each (e.g. RAS), got {codes!r}")
    return upper


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
    """Parse ``root/manifest.json`` and check it against the shipped schema; a
    clear :class:`SegVolError` for a missing directory, a missing or unparsable
    manifest, an unsupported format or a field the schema refuses."""
    root = Path(root)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise SegVolError(f"artifacts directory {root} {what} (create one with `segvol-rt export`)")
    path = root / MANIFEST
    if not path.is_file():
        raise SegVolError(f"{root} has no {MANIFEST}; it is not an artifacts directory (see `segvol-rt export`)")
    try:
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SegVolError(f"{path} is not valid JSON ({exc}); export the artifacts again") from exc
    except OSError as exc:
        raise SegVolError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not isinstance(data, dict):
        raise SegVolError(f"{path} does not hold a JSON object; export the artifacts again")
    version = data.get("format_version")
    if isinstance(version, bool) or version not in SUPPORTED_FORMATS:
        raise SegVolError(
            f"{path}: format_version {version!r} is not supported by this segvol-rt "
            f"(expects {' or '.join(map(str, SUPPORTED_FORMATS))}); export the artifacts again with this version"
        )
    record = _valid_manifest_record(raw)
    if not has_record(record):
        validate_manifest(data, path)
        write_record(record)
    return data


def _valid_manifest_record(raw: bytes) -> Path:
    """The record that the manifest whose bytes are ``raw`` passed this schema."""
    return content_record(VALID_MANIFESTS_DIR, VALID_MANIFEST_CHECK,
                          hashlib.sha256(raw).hexdigest(), _schema_sha256())


@functools.cache
def _schema_text() -> str:
    return resources.files("segvol_rt.io").joinpath(SCHEMA).read_text(encoding="utf-8")


@functools.cache
def _schema_sha256() -> str:
    return hashlib.sha256(_schema_text().encode("utf-8")).hexdigest()


@functools.cache
def manifest_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (draft 2020-12), shipped as ``segvol_rt/io/manifest.schema.json``."""
    schema: dict[str, Any] = json.loads(_schema_text())
    return schema


def validate_manifest(data: Any, path: str | Path = MANIFEST) -> None:
    """Check ``data`` against :func:`manifest_schema`; the first problem (in a
    fixed order) becomes one :class:`SegVolError` line with its JSON pointer."""
    # A missing jsonschema is an error naming it, never a skipped check: the
    # manifest is trusted only once validated (benchmarks/device/ carries the
    # wheels to machines that lack it).
    jsonschema = require("jsonschema")
    validator = jsonschema.Draft202012Validator(manifest_schema())
    errors = sorted(validator.iter_errors(data), key=_error_order)
    if not errors:
        return
    first = errors[0]
    # _describe reports every missing field of the first error's object at once
    rest = [e for e in errors[1:] if (e.validator, e.absolute_path) != (first.validator, first.absolute_path)]
    more = f" (and {len(rest)} more problem(s))" if rest else ""
    raise SegVolError(f"{path}: {_describe(first)}{more}; export the artifacts again")


# validator -> rank: an unknown field usually explains a missing one, and a
# missing field the type or value errors beside it.
_ORDER = {"additionalProperties": 0, "required": 1, "type": 2}
# What the members of an object are called in messages (default: "field").
_MEMBERS = {"/graphs": "graph", "/engines": "engine", "/tokenizer/files": "file"}


def _error_order(error: Any) -> tuple[int, list[str]]:
    return _ORDER.get(error.validator, 3), [str(p) for p in error.absolute_path]


def json_pointer(parts: Sequence[Any]) -> str:
    """RFC 6901 pointer of a path of keys and indices ("" is the whole document)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(error: Any) -> str:
    """One clause for one jsonschema error: where, and what is wrong there."""
    pointer = json_pointer(error.absolute_path)
    where = pointer or "the manifest"
    schema, instance = error.schema, error.instance
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in instance]
        return f"{where} lists no {_MEMBERS.get(pointer, 'field')} {', '.join(map(repr, missing))}"
    if error.validator == "additionalProperties":
        extra = sorted(k for k in instance if k not in schema.get("properties", {}))
        title = schema.get("title")
        return f"{where}: unknown {title + ' ' if title else ''}fields {extra}"
    if error.validator == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return f"{where} is {_shown(instance)}, expected {' or '.join(wanted)}"
    if error.validator == "enum":
        return f"{where} is {_shown(instance)}, expected one of {_shown(error.validator_value)}"
    if error.validator == "pattern" and "description" in schema:
        return f"{where} is {_shown(instance)}, not {schema['description']}"
    return f"{where}: {' '.join(error.message.split())[:200]}"


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
        self._verified: set[tuple[str, str]] = set()  # (relative path, sha256) that verify_files checked
        path = root / MANIFEST
        try:
            self.config = SegVolConfig.from_dict(manifest["config"])
        except SegVolError as exc:
            raise SegVolError(f"{path}: /config: {exc}; export again") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise SegVolError(f"{path}: /config is incomplete or malformed ({exc!r}); export again") from exc
        try:
            self.specs = {name: S.spec_from_dict(g["spec"]) for name, g in manifest["graphs"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise SegVolError(f"{path}: /graphs is incomplete or malformed ({exc!r}); export again") from exc
        missing = [g for g in S.GRAPH_NAMES if g not in self.specs]
        if missing:
            raise SegVolError(f"{path} lists no graph(s) {missing}; export again")
        _check_specs(self.specs, self.config, path)

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> Artifacts:
        """Read the manifest of ``root`` (hashes are checked by :meth:`verify`)."""
        root = Path(root)
        return cls(root, read_manifest(root))

    @property
    def voxel_orientation(self) -> str | None:
        """The axis codes of the voxel order the model expects (None: the scan's stored order)."""
        codes = self.manifest.get("voxel_orientation")
        return None if codes is None else str(codes)

    # -- paths -------------------------------------------------------------
    @property
    def prompt_template(self) -> str:
        return str(self.manifest.get("prompt_template", self.config.prompt_template))

    def graph_entry(self, name: str, precision: str = REFERENCE_PRECISION) -> dict[str, Any]:
        """The manifest entry (file, sha256, ...) of graph ``name`` at ``precision``."""
        graphs = self.manifest["graphs"]
        if name not in graphs:
            raise SegVolError(f"no graph {name!r} in {self.root}; graphs: {sorted(graphs)}")
        if precision == REFERENCE_PRECISION:
            return dict(graphs[name])
        self.require_precision(precision)
        return dict(graphs[name]["variants"][precision])

    def graph_path(self, name: str, precision: str = REFERENCE_PRECISION) -> Path:
        """Path of graph ``name`` (one of :data:`segvol_rt.io.spec.GRAPH_NAMES`) at ``precision``."""
        return self.root / self.graph_entry(name, precision)["file"]

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions every graph is exported at, ``fp32`` first."""
        graphs = self.manifest["graphs"]
        found = [p for p in GRAPH_VARIANTS[1:] if all(p in (graphs[g].get("variants") or {}) for g in S.GRAPH_NAMES)]
        return (REFERENCE_PRECISION, *found)

    def require_precision(self, precision: str) -> None:
        """Raise one :class:`SegVolError` line unless every graph exists at ``precision``."""
        if precision not in GRAPH_VARIANTS:
            hint = " (bf16 is OpenVINO's inference precision on the fp32 graphs: --backend openvino)" \
                if precision in PRECISIONS else ""
            raise SegVolError(f"precision must be one of {', '.join(GRAPH_VARIANTS)} (the graph variants), not {precision!r}{hint}")
        if precision not in self.precisions:
            raise SegVolError(
                f"{self.root} has no {precision} graphs (exported at {', '.join(self.precisions)}); "
                f"export them: segvol-rt export --precision {precision} --out DIR (and --checkpoint CKPT)"
            )

    def tokenizer_dir(self) -> Path:
        return self.root / self.manifest.get("tokenizer", {}).get("dir", TOKENIZER_DIR)

    def graph_files(self, precision: str = REFERENCE_PRECISION) -> list[tuple[str, str]]:
        """(relative path, sha256) of the three graphs at ``precision`` (a graph variant)."""
        return [(e["file"], e["sha256"]) for e in (self.graph_entry(g, precision) for g in S.GRAPH_NAMES)]

    def support_files(self) -> list[tuple[str, str]]:
        """(relative path, sha256) of what every backend reads beside its graphs:
        the tokenizer files and the text table."""
        tok = self.manifest.get("tokenizer", {})
        found = [(f"{tok.get('dir', TOKENIZER_DIR)}/{name}", digest) for name, digest in tok.get("files", {}).items()]
        table = self.manifest.get("text_table")
        return found + ([(table["file"], table["sha256"])] if table else [])

    def engine_files(self) -> list[tuple[str, str]]:
        """(relative path, sha256) of the TensorRT engines the manifest records."""
        engines = (self.manifest.get("engines") or {}).values()
        return [(e["file"], e["sha256"]) for e in engines if isinstance(e, dict) and "file" in e and "sha256" in e]

    def files(self, engines: bool = True) -> Iterator[tuple[str, str]]:
        """Every (relative path, sha256) the manifest vouches for: the graphs at
        every precision, the support files and (with ``engines``) the engines."""
        for g in self.manifest["graphs"].values():
            yield g["file"], g["sha256"]
            for variant in (g.get("variants") or {}).values():
                yield variant["file"], variant["sha256"]
        yield from self.support_files()
        yield from self.engine_files() if engines else ()

    # -- checks ------------------------------------------------------------
    def verify(self, engines: bool = True) -> None:
        """Check the sha256 of every file against the manifest (TensorRT engine
        files too, unless ``engines`` is False): :meth:`verify_files` of :meth:`files`."""
        self.verify_files(self.files(engines))

    def verify_files(self, files: Iterable[tuple[str, str]]) -> None:
        """Check the sha256 of each (relative path, sha256) of ``files``; raise
        :class:`SegVolError` naming the first missing or changed file. A file this
        object has checked already is not read again (``auto`` checks what each
        backend it tries reads), nor is one whose unchanged version hashed to its
        digest before (a record in the user cache: :mod:`segvol_rt.io.digests`).
        The others are hashed on one thread per core (hashlib lets go of the GIL):
        the full-size graphs are a load's largest cost after the model itself
        (about 0.28 s for the 609 MB of fp32 graphs on 2 cores)."""
        from concurrent.futures import ThreadPoolExecutor

        listed = [(rel, digest) for rel, digest in dict.fromkeys(files) if (rel, digest) not in self._verified]
        for rel, _ in listed:
            if not (self.root / rel).is_file():
                raise SegVolError(f"{self.root / rel} is listed in {MANIFEST} but missing; export the artifacts again")
        unrecorded = [i for i, (rel, digest) in enumerate(listed) if not is_recorded(self.root / rel, digest)]
        # hashed largest first, so that one large file does not start last on a busy thread
        order = sorted(unrecorded, key=lambda i: -(self.root / listed[i][0]).stat().st_size)
        with ThreadPoolExecutor(max_workers=max(1, min(len(order), cpu_cores()))) as pool:
            hashed = dict(zip(order, pool.map(hash_and_record, [self.root / listed[i][0] for i in order])))
        for i, (rel, digest) in enumerate(listed):
            actual = hashed.get(i, digest)
            if actual != digest:
                raise SegVolError(
                    f"{self.root / rel} does not match {MANIFEST} (sha256 {actual[:12]}..., expected {digest[:12]}...); "
                    "the file was changed or damaged - export the artifacts again"
                )
        self._verified.update(listed)

    # -- contents ----------------------------------------------------------
    def tokenizer(self) -> Any:
        """The CLIP tokenizer of these artifacts (:class:`segvol_rt.io.tokenizer.ClipTokenizer`)."""
        from segvol_rt.io.tokenizer import ClipTokenizer

        return ClipTokenizer.from_dir(self.tokenizer_dir())

    @property
    def has_text_table(self) -> bool:
        """Whether the manifest lists a text table (then :meth:`text_table` reads it or says what is wrong)."""
        return bool(self.manifest.get("text_table"))

    def text_table(self) -> tuple[list[str], np.ndarray]:
        """Vocabulary names and their text embeddings (n, C) float32, in the
        order of :data:`segvol_rt.io.vocabulary.CATEGORIES` at export time.
        A missing, unreadable or inconsistent table is a :class:`SegVolError`
        naming the file."""
        entry = self.manifest.get("text_table")
        if not entry:
            raise SegVolError(f"{self.root} has no text embedding table")
        path = self.root / entry["file"]
        if not path.is_file():
            raise SegVolError(f"{path} is listed in {MANIFEST} but missing; export the artifacts again")
        names, table = _read_table(path)
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


def _read_table(path: Path) -> tuple[list[str], np.ndarray]:
    """(names, embeddings float32) of a text table npz: 1D strings and 2D finite floats."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array
            raise SegVolError(f"{path} holds one array, not a text table archive (.npz); export again")
        with data:
            missing = [k for k in ("names", "embeddings") if k not in data.files]
            if missing:
                raise SegVolError(f"{path} lacks the array(s) {missing}; it is not a text table - export again")
            raw_names, raw_table = data["names"], data["embeddings"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise SegVolError(f"{path} is not a readable text table ({exc.__class__.__name__}: {reason}); export again") from exc
    if raw_names.ndim != 1 or raw_names.dtype.kind != "U":
        raise SegVolError(f"{path}: 'names' is {raw_names.dtype} of shape {raw_names.shape}, expected 1D strings; export again")
    if raw_table.ndim != 2 or raw_table.dtype.kind != "f" or not np.isfinite(raw_table).all():
        raise SegVolError(
            f"{path}: 'embeddings' is {raw_table.dtype} of shape {raw_table.shape}, expected finite 2D floats; export again"
        )
    return [str(n) for n in raw_names], np.ascontiguousarray(raw_table, dtype=np.float32)


def _check_specs(specs: Mapping[str, S.GraphSpec], config: SegVolConfig, path: Path) -> None:
    """Each graph's spec must be consistent and have the tensors ``config``
    implies (names, dtypes, axes, fixed sizes; ranges are the export's choice)."""
    expected = S.graph_specs(config)
    for name in S.GRAPH_NAMES:
        found = S.ranges_problem(specs[name])
        if found is None:
            found = S.spec_mismatch(specs[name], expected[name])
            if found is not None and "/shape/" in found[0]:  # fixed sizes follow from the config
                found = (found[0], f"{found[1]} for this config ({_config_summary(config)})")
        if found:
            where, what = found
            raise SegVolError(
                f"{path}: /graphs/{name}/spec{where} {what}; the manifest disagrees with itself - export the artifacts again"
            )


def _config_summary(config: SegVolConfig) -> str:
    return (
        f"embed_dim {config.embed_dim}, spatial_size {list(config.spatial_size)}, patch_size {list(config.patch_size)}, "
        f"text max_length {config.text.max_length}"
    )
