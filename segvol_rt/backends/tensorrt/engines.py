"""TensorRT engine records of the manifest and their compatibility checks.

An engine is tied to one exported graph variant (``graph_variant``, fp32 or
fp16, and that file's sha256), one model (the checkpoint's sha256), one GPU
(name and compute capability) and one TensorRT version. Engines are strongly
typed: their precision is the graph variant's own. ``segvol-rt build`` writes one :class:`EngineRecord` per graph into
the manifest's ``engines`` section; the TensorRT backend refuses an engine
whose record differs from the machine and artifacts it runs with, saying
exactly what differs. Engine files carry no custom header: everything we know
about an engine lives in its record.

Profiles are ``{input name: {"min": [...], "opt": [...], "max": [...]}}``,
the shapes of one TensorRT optimisation profile, derived from
:meth:`segvol_rt.io.spec.GraphSpec.profile` with the build's limits applied.

Pure functions, numpy-free, importable without TensorRT or a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from segvol_rt.backends.cuda_common import GpuIdentity
from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S
from segvol_rt.io.artifacts import GRAPH_VARIANTS, REFERENCE_PRECISION

ENGINE_SUFFIX = ".plan"
REBUILD_HINT = "rebuild the engines on this machine: segvol-rt build --artifacts DIR"

Profiles = dict[str, dict[str, list[int]]]


@dataclass(frozen=True)
class EngineRecord:
    """The manifest's record of one engine (``manifest["engines"][graph]``).

    ``file`` is relative to the artifacts directory with ``/`` separators;
    ``graph_variant`` is the precision of the ONNX graph it was built from
    (records written before variants existed were built from the fp32 graph).
    """

    graph: str
    file: str
    sha256: str
    precision: str
    profiles: Profiles
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    model_sha256: str
    graph_sha256: str
    options: dict[str, Any] = field(default_factory=dict)
    graph_variant: str = REFERENCE_PRECISION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineRecord:
        optional = ("options", "graph_variant")
        names = [f for f in cls.__dataclass_fields__ if f not in optional]
        missing = [n for n in names if n not in data]
        if missing:
            where = data.get("graph", "?") if isinstance(data, Mapping) else "?"
            raise SegVolError(f"engine record {where!r} lacks {missing}; {REBUILD_HINT}")
        record = cls(**{n: data[n] for n in names}, options=dict(data.get("options", {})),
                     graph_variant=str(data.get("graph_variant", REFERENCE_PRECISION)))
        for what, value in (("precision", record.precision), ("graph_variant", record.graph_variant)):
            if value not in GRAPH_VARIANTS:
                raise SegVolError(f"engine {record.file}: {what} {value!r} is not one of {GRAPH_VARIANTS}")
        return record

    @property
    def gpu(self) -> GpuIdentity:
        return GpuIdentity(self.gpu_name, self.compute_capability)


def engine_file(graph: str) -> str:
    """Relative path of a graph's engine inside the artifacts directory."""
    return f"engines/{graph}{ENGINE_SUFFIX}"


# -- profiles --------------------------------------------------------------
def build_limits(max_batch: int | None, max_points: int | None) -> dict[str, dict[str, int]]:
    """Per graph, the dynamic axes whose maximum the build options lower.

    ``max_batch`` caps the window batch of the image encoder and the prompt
    decoder; ``max_points`` caps the user's points per prompt, so the decoder's
    token axis ``N`` is capped at ``max_points + EXTRA_TOKENS``. The text
    encoder's batch counts prompts, not windows, and is never lowered.
    """
    limits: dict[str, dict[str, int]] = {S.IMAGE_ENCODER: {}, S.TEXT_ENCODER: {}, S.PROMPT_DECODER: {}}
    if max_batch is not None:
        if max_batch < 1:
            raise SegVolError(f"--max-batch must be at least 1, got {max_batch}")
        limits[S.IMAGE_ENCODER]["B"] = max_batch
        limits[S.PROMPT_DECODER]["B"] = max_batch
    if max_points is not None:
        if max_points < 1:
            raise SegVolError(f"--max-points must be at least 1, got {max_points}")
        limits[S.PROMPT_DECODER]["N"] = max_points + S.EXTRA_TOKENS
    return limits


def limited_ranges(spec: S.GraphSpec, limits: Mapping[str, int]) -> dict[str, tuple[int, int, int]]:
    """The graph's dynamic-axis ranges with each axis in ``limits`` capped.

    A limit above the exported range is an error (the ONNX graph was exported
    for at most that many), never silently widened.
    """
    ranges = {k: tuple(v) for k, v in spec.ranges.items()}
    for axis, cap in limits.items():
        if axis not in ranges:
            continue
        lo, opt, hi = ranges[axis]
        if cap > hi:
            raise SegVolError(
                f"{spec.name}: axis {axis} limit {cap} exceeds the exported range [{lo}, {hi}]; "
                "export again with larger --max-batch/--max-points, or build with a smaller limit"
            )
        if cap < lo:
            raise SegVolError(f"{spec.name}: axis {axis} limit {cap} is below the exported minimum {lo}")
        ranges[axis] = (lo, min(opt, cap), cap)
    return ranges  # type: ignore[return-value]


def profile_shapes(spec: S.GraphSpec, limits: Mapping[str, int] | None = None) -> Profiles:
    """Input name -> {"min", "opt", "max"} shapes of the graph's TensorRT
    optimisation profile, from :meth:`GraphSpec.profile` with ``limits``."""
    narrowed = S.GraphSpec(spec.name, spec.inputs, spec.outputs, limited_ranges(spec, limits or {}))
    return {
        name: {"min": list(lo), "opt": list(opt), "max": list(hi)}
        for name, (lo, opt, hi) in narrowed.profile().items()
    }


def spec_for_profiles(spec: S.GraphSpec, profiles: Mapping[str, Mapping[str, list[int]]]) -> S.GraphSpec:
    """``spec`` with its dynamic-axis ranges read back from an engine's profile,
    so :meth:`GraphSpec.validate_inputs` rejects what the engine cannot run
    with a clear message instead of a TensorRT error."""
    ranges = dict(spec.ranges)
    for tensor in spec.inputs:
        shapes = profiles.get(tensor.name)
        if shapes is None:
            raise SegVolError(f"engine profile of {spec.name} lacks input {tensor.name!r}; {REBUILD_HINT}")
        for index, axis in tensor.dynamic_axes().items():
            ranges[axis] = tuple(int(shapes[k][index]) for k in ("min", "opt", "max"))  # type: ignore[assignment]
    return S.GraphSpec(spec.name, spec.inputs, spec.outputs, ranges)


# -- compatibility -----------------------------------------------------------
def engine_mismatches(
    record: EngineRecord,
    *,
    model_sha256: str,
    graph_sha256: str,
    tensorrt_version: str,
    gpu: GpuIdentity,
) -> list[str]:
    """Every way ``record`` differs from what it would run with; empty if none.

    Each item is one phrase: ``"<what>: engine built for X, here Y"``.
    """
    checks = [
        ("model (checkpoint sha256)", record.model_sha256, model_sha256),
        ("graph (ONNX sha256)", record.graph_sha256, graph_sha256),
        ("TensorRT version", record.tensorrt_version, tensorrt_version),
        ("GPU", record.gpu_name, gpu.name),
        ("compute capability", record.compute_capability, gpu.compute_capability),
    ]
    out = []
    for what, built, here in checks:
        if str(built) != str(here):
            out.append(f"{what}: engine built for {_short(built)}, here {_short(here)}")
    return out


def check_engine(
    record: EngineRecord,
    *,
    model_sha256: str,
    graph_sha256: str,
    tensorrt_version: str,
    gpu: GpuIdentity,
) -> None:
    """Raise :class:`SegVolError` naming every mismatch of ``record``."""
    problems = engine_mismatches(
        record,
        model_sha256=model_sha256,
        graph_sha256=graph_sha256,
        tensorrt_version=tensorrt_version,
        gpu=gpu,
    )
    if problems:
        raise SegVolError(f"engine {record.file} cannot run here ({'; '.join(problems)}); {REBUILD_HINT}")


def artifact_hashes(manifest: Mapping[str, Any], graph: str, variant: str = REFERENCE_PRECISION) -> tuple[str, str]:
    """(checkpoint sha256, sha256 of the graph's ``variant``) the manifest
    vouches for; an engine must have been built from exactly these."""
    try:
        entry = manifest["graphs"][graph]
        if variant != REFERENCE_PRECISION:
            entry = entry["variants"][variant]
        return str(manifest["checkpoint"]["sha256"]), str(entry["sha256"])
    except (KeyError, TypeError) as exc:
        raise SegVolError(
            f"manifest lacks the checkpoint or the {graph} ({variant}) sha256 ({exc!r}); "
            f"export again (segvol-rt export --precision {variant})"
        ) from exc


def device_memory_bytes(engine: Any) -> int:
    """Device memory an execution context of ``engine`` needs: TensorRT's
    ``device_memory_size_v2`` (10.1 and later; 11 has only this one), else the
    10.0 ``device_memory_size``. Chosen by what the engine offers."""
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)


def engine_records(manifest: Mapping[str, Any]) -> dict[str, EngineRecord]:
    """The manifest's engine records by graph name; ``{}`` when none were built."""
    section = manifest.get("engines") or {}
    if not isinstance(section, Mapping):
        raise SegVolError(f"manifest 'engines' is not an object; {REBUILD_HINT}")
    return {graph: EngineRecord.from_dict(entry) for graph, entry in section.items()}


def has_engines(manifest: Mapping[str, Any]) -> bool:
    """True when the manifest records an engine for each of the three graphs."""
    section = manifest.get("engines") or {}
    return isinstance(section, Mapping) and all(g in section for g in S.GRAPH_NAMES)


def _short(value: Any) -> str:
    """Hashes shortened to 12 hex digits; other values quoted."""
    text = str(value)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:12] + "..."
    return repr(text)
