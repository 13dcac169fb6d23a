"""TensorRT engines from the exported ONNX graphs (``segvol-rt build``).

One code path for TensorRT 10.x and 11.x. The network is *strongly typed*:
every tensor has the type the ONNX graph gives it, so an fp16 engine is
built from the fp16 graph variant (``segvol-rt export --precision fp16``;
norms, softmax, reductions and the decoder's two-stage LayerNorm are fp32
there, through explicit Casts) and an fp32 engine from the fp32 graph. No
precision flag and no per-layer pin is set: TensorRT 11 removed them
(``BuilderFlag.FP16``, ``OBEY_PRECISION_CONSTRAINTS``, ``ILayer.precision``,
``ILayer.set_output_type``), and a strongly typed 10.x network refuses them.

Steps:

1. :func:`create_builder` - logger and builder;
2. :func:`parse_onnx` - a network created with
   ``1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (:func:`network_flags`:
   required on 10.x, accepted and ignored on 11.x, where every network is
   strongly typed), parser errors reported with node names;
3. :func:`create_config` - the workspace pool, nothing else;
4. :func:`add_profile` - one optimisation profile from
   :meth:`segvol_rt.io.spec.GraphSpec.profile` (max batch/points optionally
   lowered, never above the exported ranges);
5. :func:`attach_timing_cache` - load a timing cache (shared by the three
   builds and saved afterwards);
6. :func:`serialize` - ``build_serialized_network``;
7. the engine file is written atomically and recorded in the manifest's
   ``engines`` section (:class:`segvol_rt.backends.tensorrt.engines.EngineRecord`,
   with the TensorRT version and the graph variant).

Engine files are TensorRT's serialized engines as they are, without any
header of ours. ``tensorrt`` is imported lazily; without it the build fails
with a :class:`SegVolError` naming the ``trt`` extra, and without a GPU with
a clear error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segvol_rt._optional import require
from segvol_rt.backends.tensorrt import engines as E
from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S
from segvol_rt.io.artifacts import GRAPH_VARIANTS, Artifacts
from segvol_rt.io.atomic import atomic_write_bytes
from segvol_rt.io.digests import sha256_file

GIB = 1 << 30


@dataclass(frozen=True)
class BuildOptions:
    """Options of ``segvol-rt build``.

    ``max_batch``/``max_points`` (None: the exported graph's maximum) lower
    the profiles' maxima, see :func:`segvol_rt.backends.tensorrt.engines.build_limits`.
    """

    precision: str = "fp16"  # the graph variant built from; see the module docstring
    max_batch: int | None = None
    max_points: int | None = None
    timing_cache: Path | None = None
    workspace_gib: float = 4.0

    def __post_init__(self) -> None:
        if self.precision not in GRAPH_VARIANTS:
            raise SegVolError(f"--precision must be one of {', '.join(GRAPH_VARIANTS)}, got {self.precision!r}")
        if self.workspace_gib <= 0:
            raise SegVolError("workspace must be positive")


# -- steps -----------------------------------------------------------------
def require_tensorrt() -> Any:
    """The tensorrt module, or a :class:`SegVolError` naming the ``trt`` extra."""
    return require("tensorrt")


def create_builder(trt: Any) -> tuple[Any, Any]:
    """(logger, builder). The logger prints warnings and errors."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise SegVolError("TensorRT could not create a builder (no usable GPU?)")
    return logger, builder


def network_flags(trt: Any) -> int:
    """``create_network`` flags of a strongly typed network.

    TensorRT 10.x documents ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
    (its ``EXPLICIT_BATCH`` is ignored: networks are always explicit-batch);
    TensorRT 11.x removed ``EXPLICIT_BATCH`` and keeps ``STRONGLY_TYPED`` for
    compatibility, ignored because strong typing is the only mode. The same
    flag thus serves both; should a later 11.x drop the member, no flag is
    needed there (found by looking, never by catching an AttributeError)."""
    flags = trt.NetworkDefinitionCreationFlag
    if not hasattr(flags, "STRONGLY_TYPED"):
        return 0  # strong typing is the only mode where the flag is gone
    return 1 << int(flags.STRONGLY_TYPED)


def parse_onnx(trt: Any, builder: Any, logger: Any, path: Path) -> tuple[Any, Any]:
    """(network, parser) for the ONNX file at ``path``, strongly typed
    (:func:`network_flags`). The parser owns the weights and must outlive the
    build, hence it is returned too.
    """
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(parser_errors(parser)) or "no details"
        raise SegVolError(f"TensorRT's ONNX parser rejected {path.name}: {errors}")
    return network, parser


def parser_errors(parser: Any) -> list[str]:
    """One line per parser error: node index, name and operator, then the
    description."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = _call(err, "node", -1)
        name = _call(err, "node_name", "")
        op = _call(err, "node_operator", "")
        where = f"node {node}" + (f" {name!r}" if name else "") + (f" ({op})" if op else "")
        lines.append(f"{where}: {err.desc()}")
    return lines


def create_config(trt: Any, builder: Any, options: BuildOptions) -> Any:
    """The builder config: the workspace pool limit. No precision flag: the
    network is strongly typed, its types are the graph's."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * GIB))
    return config


def add_profile(trt: Any, builder: Any, config: Any, profiles: E.Profiles) -> None:
    """One optimisation profile with each input's min/opt/max shapes."""
    profile = builder.create_optimization_profile()
    for name, shapes in profiles.items():
        profile.set_shape(name, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
    if config.add_optimization_profile(profile) < 0:
        raise SegVolError(f"TensorRT rejected the optimisation profile {profiles}")


def attach_timing_cache(trt: Any, config: Any, blob: bytes) -> Any:
    """Create a timing cache from ``blob`` (``b""``: empty) and use it for this
    build. A cache from another TensorRT version or GPU is refused by
    TensorRT; we then start with an empty one."""
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def serialize(builder: Any, network: Any, config: Any, label: str) -> Any:
    """``build_serialized_network``; the serialized engine (a buffer)."""
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise SegVolError(f"TensorRT failed to build the {label} engine (see the TensorRT log above)")
    return blob


def write_atomic(path: Path, data: Any) -> str:
    """Write ``data`` (bytes or a buffer such as TensorRT's ``IHostMemory``)
    to ``path`` through a temporary file and a rename; returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    view = memoryview(data)
    atomic_write_bytes(path, view)
    return hashlib.sha256(view).hexdigest()


# -- one graph, then all three -----------------------------------------------
def build_engine(
    trt: Any,
    onnx_path: Path,
    engine_path: Path,
    profiles: E.Profiles,
    options: BuildOptions,
    cache_blob: bytes,
) -> tuple[str, bytes]:
    """Build one engine into ``engine_path`` from the ONNX graph ``onnx_path``
    (of the variant ``options.precision``).

    Returns (engine sha256, updated timing cache blob).
    """
    logger, builder = create_builder(trt)
    network, parser = parse_onnx(trt, builder, logger, onnx_path)
    config = create_config(trt, builder, options)
    add_profile(trt, builder, config, profiles)
    attach_timing_cache(trt, config, cache_blob)
    blob = serialize(builder, network, config, onnx_path.stem)
    digest = write_atomic(engine_path, blob)
    cache_blob = bytes(memoryview(config.get_timing_cache().serialize()))
    del parser  # kept alive until here: it owns the network's weights
    return digest, cache_blob


def build_engines(
    artifacts_dir: str | Path,
    options: BuildOptions = BuildOptions(),
    graphs: Iterable[str] = S.GRAPH_NAMES,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, E.EngineRecord]:
    """Build an engine per graph of ``artifacts_dir`` and record each in its
    manifest's ``engines`` section as soon as it is written, so the manifest
    always vouches for the files on disk. Returns the new records by graph."""
    artifacts = Artifacts.load(artifacts_dir)
    artifacts.require_precision(options.precision)  # names `export --precision fp16`, before TensorRT is looked for
    trt = require_tensorrt()
    gpu = _query_gpu()
    limits = E.build_limits(options.max_batch, options.max_points)
    # Everything that can be wrong with the inputs is checked before the slow builds.
    plans = {g: (E.profile_shapes(artifacts.specs[g], limits[g]), _checked_hashes(artifacts, g, options.precision)) for g in graphs}
    cache_blob = _read_cache(options.timing_cache)
    records: dict[str, E.EngineRecord] = {}
    for graph, (profiles, (model_sha, graph_sha)) in plans.items():
        rel = E.engine_file(graph)
        source = artifacts.graph_path(graph, options.precision)
        log(f"building {graph} from {source.name} (strongly typed, {options.precision}) on {gpu.name} ...")
        digest, cache_blob = build_engine(trt, source, artifacts.root / rel, profiles, options, cache_blob)
        records[graph] = E.EngineRecord(
            graph=graph,
            file=rel,
            sha256=digest,
            precision=options.precision,
            profiles=profiles,
            tensorrt_version=trt.__version__,
            gpu_name=gpu.name,
            compute_capability=gpu.compute_capability,
            model_sha256=model_sha,
            graph_sha256=graph_sha,
            options={"workspace_gib": options.workspace_gib, "strongly_typed": True},
            graph_variant=options.precision,
        )
        engines = dict(artifacts.manifest.get("engines") or {})
        engines[graph] = records[graph].to_dict()
        artifacts.update(engines=engines)
        log(f"  {rel}")
        if options.timing_cache is not None:
            write_atomic(Path(options.timing_cache), cache_blob)
    return records


# -- helpers -----------------------------------------------------------------
def _query_gpu() -> E.GpuIdentity:
    """The GPU TensorRT builds for: the current CUDA device, 0 unless
    ``CUDA_VISIBLE_DEVICES`` says otherwise."""
    from segvol_rt.backends.cuda_common import query_gpu

    return query_gpu(0)


def _checked_hashes(artifacts: Artifacts, graph: str, variant: str) -> tuple[str, str]:
    """(model sha256, graph sha256) of the manifest, after checking that the
    ONNX file of ``variant`` is the one the manifest vouches for (the engine inherits it)."""
    model_sha, graph_sha = E.artifact_hashes(artifacts.manifest, graph, variant)
    path = artifacts.graph_path(graph, variant)
    if not path.is_file() or sha256_file(path) != graph_sha:
        raise SegVolError(f"{path} is missing or does not match manifest.json; export the artifacts again")
    return model_sha, graph_sha


def _read_cache(path: Path | None) -> bytes:
    if path is None or not Path(path).is_file():
        return b""
    return Path(path).read_bytes()


def _call(obj: Any, method: str, default: Any) -> Any:
    fn = getattr(obj, method, None)
    return fn() if callable(fn) else default
