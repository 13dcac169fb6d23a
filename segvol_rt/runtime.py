"""The public inference API: :class:`SegVolRuntime` (numpy only, torch never imported).

    rt = SegVolRuntime.load("artifacts/")             # manifest, hashes, backend
    rt.set_volume("ct.nii.gz")                        # preprocessing, once
    seg = rt.segment(text="liver")                    # zoom-out-zoom-in
    segs = rt.segment_many(["liver", {"box": "10,20,5,60,80,40"}])

The runtime is stateful: :meth:`SegVolRuntime.set_volume` preprocesses a scan
once; the zoom-out image is encoded lazily once per volume; zoom-in window
embeddings are cached per volume by window (see :mod:`segvol_rt.pipeline.zoom`), so
targets that share windows encode them once. Text embeddings come from the
artifacts' table for known names (:func:`segvol_rt.io.vocabulary.normalize_name`)
and from the text encoder otherwise (cached per phrase). Both caches are
bounded by bytes, least recently used out (``cache_bytes``,
``text_cache_bytes``; see :class:`SegVolRuntime`). ``release_volume()``
frees a scan and its embeddings (host or GPU memory) while the backend stays
open; ``clear_window_cache()`` forgets only the window embeddings.

Arguments are checked at this boundary with real types
(:mod:`segvol_rt.validate`, :class:`segvol_rt.types.Request`):
a misuse is a :class:`SegVolError` naming the argument, never a coercion.

Spaces: prompts and outputs are in **scan** voxel indices ``(i, j, k)``; the
pipeline runs in crop / zoom-out space ``(D, H, W)`` (:mod:`segvol_rt.pipeline.geometry`).

Device: the pipeline runs in the backend's array module (``backend.xp``). On
a CUDA backend (ONNX Runtime CUDA with IO binding, TensorRT) the scan is
uploaded once in :meth:`SegVolRuntime.set_volume` and everything after that
stays on the GPU - preprocessing, the zoom-out resize, the graphs, the
coarse upsample, ROI, window batches, blending and the final scan-space mask
(CUDA kernels through :mod:`segvol_rt.ops`). What crosses to the host: bounding
boxes (ROI and window prompt boxes, six ints each), the text embeddings of
new phrases, and at the end the uint8 mask (and probabilities or logits when
asked for). ``on_device=True`` skips that last download: the result then
holds cupy arrays (on CPU backends it changes nothing). The CPU backends run
the same code on numpy arrays.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from segvol_rt import validate as V
from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S
from segvol_rt.ops import arrays as A
from segvol_rt.pipeline import zoom as Z
from segvol_rt.pipeline.caches import MIB, ByteLRU
from segvol_rt.pipeline.flow import RequestFlow
from segvol_rt.pipeline.requests import check_zoom_target
from segvol_rt.pipeline.text_embeddings import TextEmbeddings
from segvol_rt.pipeline.volume import Volume, load_volume
from segvol_rt.timing import StageClock
from segvol_rt.types import FLAGS, BoxPrompt, PointsPrompt, Request, Segmentation, request_at

if TYPE_CHECKING:  # runtime types only: importing segvol_rt stays light
    from segvol_rt.backends.base import Backend
    from segvol_rt.io.artifacts import Artifacts
    from segvol_rt.pipeline.cases import CaseResult
    from segvol_rt.pipeline.geometry import Geometry

# Default bound of the phrase cache: a full-size text embedding is 768 float32
# (3 KB), so 16 MiB keeps about 5,000 free phrases; names in the artifacts'
# table are never cached (the table holds them). The window cache's default is
# Z.DEFAULT_CACHE_BYTES (512 MiB).
DEFAULT_TEXT_CACHE_BYTES = 16 * MIB


def _weakly(method: Callable[[], None]) -> Callable[[], None]:
    """``method`` called through a weak reference to its object (nothing once it is gone)."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call


class SegVolRuntime:
    """SegVol inference on an artifacts directory with any backend.

    Attributes:
        artifacts: the loaded :class:`segvol_rt.io.artifacts.Artifacts`.
        config: the model's :class:`segvol_rt.io.config.SegVolConfig`.
        backend: the open :class:`segvol_rt.backends.base.Backend`.
        backend_reason: why this backend (from :func:`segvol_rt.backends.select.open_backend`).

    Memory: the zoom-in window embeddings of the current volume are kept up
    to ``cache_bytes`` (default :data:`segvol_rt.pipeline.zoom.DEFAULT_CACHE_BYTES`,
    512 MiB) and the encoded phrases up to ``text_cache_bytes`` (default
    :data:`DEFAULT_TEXT_CACHE_BYTES`, 16 MiB), least recently used out
    (:class:`segvol_rt.pipeline.caches.ByteLRU`; host or GPU memory). The
    windows of the call in progress are kept until it has decoded them, so one
    call whose windows alone exceed ``cache_bytes`` still runs; the cache
    shrinks back to the bound after it. 0 disables keeping them between
    calls. :attr:`stats` reports both caches.
    """

    def __init__(
        self,
        artifacts: Artifacts,
        backend: Backend,
        backend_reason: str = "",
        cache_bytes: int = Z.DEFAULT_CACHE_BYTES,
        text_cache_bytes: int = DEFAULT_TEXT_CACHE_BYTES,
    ):
        self.artifacts = artifacts
        self.config = artifacts.config
        self.backend = backend
        self.backend_reason = backend_reason
        self._cache_bytes = V.integer(cache_bytes, "cache_bytes", minimum=0)
        self._volume: Volume | None = None
        self._texts = TextEmbeddings(artifacts, V.integer(text_cache_bytes, "text_cache_bytes", minimum=0))
        self._text_cache = self._texts.cache
        # through a weak reference: a hook bound to the runtime would make it a cycle, and a dropped
        # runtime would hold its backend (models, GPU memory) until the garbage collector ran
        self._stats = StageClock(on_exit=_weakly(self._stage_end))
        self._memory: A.GpuMemory | None = None

    @classmethod
    def load(
        cls,
        artifacts_dir: str | os.PathLike[str],
        backend: str = "auto",
        device: str = "auto",
        verify: bool = True,
        checkpoint: str | os.PathLike[str] | None = None,
        cache_bytes: int = Z.DEFAULT_CACHE_BYTES,
        text_cache_bytes: int = DEFAULT_TEXT_CACHE_BYTES,
        threads: int | None = None,
        precision: str | None = None,
    ) -> SegVolRuntime:
        """Read the manifest, check the sha256 of the files the backend reads
        (``verify``: its graphs at the precision it runs, or its engines, and the
        tokenizer and text table) and open the backend.

        ``backend``: auto, tensorrt, onnxruntime or torch; ``device``: auto, cpu
        or cuda; ``checkpoint``: the torch backend's checkpoint file;
        ``cache_bytes`` / ``text_cache_bytes``: the cache bounds (see the class doc);
        ``threads``: CPU threads of the CPU backends (None: all cores);
        ``precision``: what the backend computes in: ``"fp32"`` or ``"fp16"`` (the graph
        variant; fp16 needs artifacts from ``segvol-rt export --precision fp16``), or
        ``"bf16"`` (OpenVINO's inference precision, where the CPU offers it); None: fp32
        on ONNX Runtime, OpenVINO and torch, the built engines' on TensorRT."""
        from segvol_rt.backends.select import BACKENDS, DEVICES, open_backend
        from segvol_rt.io.artifacts import PRECISIONS, Artifacts

        root = V.path(artifacts_dir, "artifacts_dir")
        backend = V.choice(backend, "backend", BACKENDS)
        device = V.choice(device, "device", DEVICES)
        verify = V.boolean(verify, "verify")
        checkpoint = V.optional_path(checkpoint, "checkpoint")
        cache_bytes = V.integer(cache_bytes, "cache_bytes", minimum=0)
        text_cache_bytes = V.integer(text_cache_bytes, "text_cache_bytes", minimum=0)
        threads = None if threads is None else V.integer(threads, "threads", minimum=1)
        precision = None if precision is None else V.choice(precision, "precision", PRECISIONS)
        artifacts = Artifacts.load(root)
        opened, reason = open_backend(artifacts, backend=backend, device=device, checkpoint=checkpoint, threads=threads,
                                      precision=precision, verify=verify)
        return cls(artifacts, opened, reason, cache_bytes=cache_bytes, text_cache_bytes=text_cache_bytes)

    # -- limits -----------------------------------------------------------------
    def _max_batch(self, graph: str) -> int:
        return self.backend.preferred_batch(graph)

    @property
    def max_points(self) -> int:
        """User points one prompt may hold (decoder tokens minus box, text and pad)."""
        return int(self.backend.specs[S.PROMPT_DECODER].ranges["N"][2]) - S.EXTRA_TOKENS

    @property
    def xp(self) -> Any:
        """The array module the pipeline runs in: the backend's (numpy or cupy)."""
        return self.backend.xp

    @property
    def voxel_orientation(self) -> str | None:
        """The axis codes of the voxel order the model declares (artifacts manifest), or None."""
        return getattr(self.artifacts, "voxel_orientation", None)

    @property
    def provenance(self) -> dict[str, Any]:
        """What produces this runtime's masks: segvol-rt version, the checkpoint's
        sha256 (from the artifacts manifest), backend, device, precision (what the
        backend computes in, as it declares it: the graph variant on ONNX Runtime
        and TensorRT, the compiled model's inference precision on OpenVINO) and
        CPU threads."""
        from segvol_rt._version import __version__

        manifest = getattr(self.artifacts, "manifest", None)  # None for artifacts that carry no manifest
        checkpoint = manifest.get("checkpoint") if isinstance(manifest, dict) else None
        return {
            "segvol_rt_version": __version__,
            "checkpoint_sha256": checkpoint.get("sha256") if isinstance(checkpoint, dict) else None,
            "backend": self.backend.name,
            "device": self.backend.device,
            "precision": self.backend.precision,
            "threads": self.backend.threads,
        }

    def zoom_settings(self, window_prompts: str = "official") -> Z.ZoomSettings:
        """The zoom-in settings of this model and backend: the model's window,
        the official overlap and the backend's preferred batch per graph call."""
        return Z.ZoomSettings(
            window=self.config.spatial_size,
            encoder_batch=self._max_batch(S.IMAGE_ENCODER),
            decoder_batch=self._max_batch(S.PROMPT_DECODER),
            window_prompts=window_prompts,
        )

    def _stage_end(self) -> None:
        """End of a timed stage: on the GPU, wait for the queued kernels (so the
        stage's time is its own) and sample the memory high-water mark."""
        xp = self.xp
        if A.is_host(xp):
            return
        A.synchronize(xp)
        if self._memory is None or self._memory.xp is not xp:
            self._memory = A.GpuMemory(xp)
        self._memory.sample()

    @property
    def stats(self) -> dict[str, Any]:
        """Seconds per stage since load, the caches, and the GPU memory
        high-water marks (:class:`segvol_rt.ops.arrays.GpuMemory`; None on CPU
        backends) sampled at stage ends since load.

        ``window_cache`` (the current volume's; zeros without one) and
        ``text_cache`` (since load) are :meth:`segvol_rt.pipeline.caches.ByteLRU.stats`:
        entries, bytes, max_bytes, peak_bytes, evictions, hits, misses. With a
        volume, ``windows_encoded``, ``encoder_calls`` and ``windows_cached``
        count its window encoder work and cached entries."""
        out: dict[str, Any] = {"timings": self._stats.as_dict()}
        memory = self._memory.as_dict() if self._memory is not None else A.GpuMemory(np).as_dict()
        out.update(device="cpu" if A.is_host(self.xp) else "cuda", **memory)
        windows = self._volume.windows.store if self._volume is not None else ByteLRU[Any](self._cache_bytes)
        out.update(window_cache=windows.stats(), text_cache=self._text_cache.stats())
        if self._volume is not None:
            cache = self._volume.windows
            out.update(windows_encoded=cache.windows_encoded, encoder_calls=cache.encoder_calls,
                       windows_cached=len(cache.embeddings))
        return out

    # -- volume ------------------------------------------------------------------
    def set_volume(
        self,
        volume: str | os.PathLike[str] | np.ndarray,
        affine: np.ndarray | None = None,
        reorient: str | None = None,
        series: str | None = None,
        overwrite_input: bool = False,
    ) -> None:
        """Preprocess a scan (a NIfTI path, a DICOM folder or file - ``series``: the
        SeriesInstanceUID when it holds several, see :mod:`segvol_rt.io.dicom` - or a real-valued ``(I, J, K)`` array in
        scan space with its 4x4 ``affine``, identity by default) once for all targets.

        Arrays of integer, unsigned or floating-point dtype are read as float32
        (as the official LoadImage does); bool, complex, object and string
        arrays are refused (no CT intensity; a 0/1 mask is not a scan). The
        affine must be a finite real 4x4 array; with a path it comes from the
        file, so passing one as well is refused.

        On a CUDA backend the scan is uploaded once (a cupy array is used as it
        is) and preprocessed on the GPU; the crop and zoom-out images stay there.

        ``reorient``: None - the model's :attr:`voxel_orientation` when its
        manifest declares one, else the stored voxel order (SegVol's weights,
        as the official pipeline); axis codes such as "RAS"; or "stored" (the
        stored order whatever the model declares). Masks and prompts stay in
        the scan's voxel grid either way.

        ``overwrite_input``: the runtime may normalise a float32 array volume in
        place, so that no second scan-sized float32 array is made (200 MiB for
        512x512x200); its values are the normalised ones afterwards. Files, and
        arrays that are converted anyway (another dtype or layout), never need it."""
        from segvol_rt.pipeline.geometry import model_orientation

        reorient = model_orientation(V.optional_text(reorient, "reorient"), self.voxel_orientation)
        self._volume = load_volume(volume, affine, reorient, series, self.xp, self.config.spatial_size, self._cache_bytes,
                                   self._stats, overwrite_input=V.boolean(overwrite_input, "overwrite_input"))

    def clear_caches(self) -> None:
        """Forget the zoom-out embedding, the window embeddings and the encoded
        phrases (not the preprocessing): the next call does all its work again."""
        if self._volume is not None:
            self._volume.zoom_embedding = None
        self.clear_window_cache()
        self._text_cache.clear()

    def clear_window_cache(self) -> None:
        """Forget the zoom-in window embeddings only: the next target encodes
        its windows again, as the official per-target flow does."""
        if self._volume is not None:
            self._volume.windows = Z.EmbeddingCache(self._cache_bytes)

    def release_volume(self) -> None:
        """Drop the current scan, its preprocessed images and embeddings (host
        or GPU memory); the backend stays open for the next :meth:`set_volume`."""
        self._volume = None

    def _require_volume(self) -> Volume:
        if self._volume is None:
            raise SegVolError("no volume: call set_volume(...) before segment(...)")
        return self._volume

    @property
    def crop_image(self) -> np.ndarray:
        """The current volume's crop-space image (D, H, W), numpy (downloaded
        once from the GPU on CUDA backends)."""
        return self._require_volume().on_host("crop_image")

    @property
    def zoom_image(self) -> np.ndarray:
        """The current volume's zoom-out image (``spatial_size``), numpy."""
        return self._require_volume().on_host("zoom_image")

    @property
    def geometry(self) -> Geometry:
        """The current volume's coordinate chain (scan -> model -> padded -> crop -> zoom)."""
        return self._require_volume().geometry

    def _flow(self) -> RequestFlow:
        """The per-request flow on this runtime's backend, text embeddings and clock."""
        return RequestFlow(self.backend, self.config, self._texts, self.max_points, self.zoom_settings(), self._stage_end,
                           self._stats)

    def _zoom_embedding(self, timings: StageClock) -> Any:
        """The zoom-out image's embedding (C, d, h, w), encoded once per volume."""
        return self._require_volume().zoom_embedding_of(self.backend, timings)

    def text_embeddings(self, texts: Sequence[str]) -> list[np.ndarray]:
        """(C,) float32 per text (a list of non-empty strings): the table row of
        a known name, else the phrase cache, else the text encoder on the prompt
        template (one batched call for the new phrases, then cached)."""
        with self._resting():
            return self._texts.embeddings(self.backend, texts)

    @contextmanager
    def _resting(self) -> Iterator[None]:
        """Run the block, then let the backend give back its runs' memory
        (:meth:`segvol_rt.backends.base.Backend.rest`) however the block ends:
        between requests, no graph's run memory is kept."""
        try:
            yield
        finally:
            self.backend.rest()

    # -- segmentation ----------------------------------------------------------------
    def segment(
        self,
        text: str | None = None,
        box: BoxPrompt | None = None,
        points: PointsPrompt | None = None,
        **options: Any,
    ) -> Segmentation:
        """Segment one target of the current volume; prompts in scan voxel indices.

        Args:
            text: a target name (table lookup) or a free phrase (text encoder).
            box: ``"i0,j0,k0,i1,j1,k1"`` or 6 ints, inclusive.
            points: ``"i,j,k[,label];..."`` or ``[(i, j, k[, label]), ...]`` (label 1/0).
            options: the other fields of :class:`Request`, by keyword:

        Options:
            zoom_in: run the zoom-in stage after the coarse pass.
            probabilities: also return sigmoid probabilities in scan space.
            seed: seed of the point-mode window prompt sampling.
            keep_logits: keep the crop-space logits on the result.
            on_device: on a CUDA backend, return the arrays as cupy arrays on
                the GPU instead of downloading them (no effect on CPU backends).
            window_prompts: ``"official"`` reproduces the official zoom-in,
                whose window box/points are misplaced by the padding on scans
                smaller than a window along an axis; ``"aligned"`` places them
                on the padded window (identical results on larger scans).
        """
        return self.segment_many([Request.of({"text": text, "box": box, "points": points, **options})])[0]

    def segment_many(self, targets: Sequence[Request | Mapping[str, Any] | str]) -> list[Segmentation]:
        """Segment several targets of the current volume, sharing preprocessing, the
        zoom-out encoding, window encodings and batched graph calls.

        ``targets`` is a list (a bare string is refused, not read as one target
        per letter) of names, mappings of :class:`Request` fields or Requests."""
        requests = [request_at(t, i) for i, t in enumerate(V.sequence(targets, "targets", "targets (names, mappings or Requests)"))]
        vol = self._require_volume()
        if not requests:
            return []
        timings = StageClock()
        flow = self._flow()
        with self._resting():
            return flow.run(vol, requests, flow.model_targets(vol, requests, timings), timings)

    def segment_zoom_space(self, targets: Sequence[Z.Target], **options: Any) -> list[Segmentation]:
        """Segment targets whose box/points are already in **zoom-out** voxel indices
        ``(D, H, W)`` of the current volume (:class:`segvol_rt.pipeline.zoom.Target`), e.g.
        evaluation prompts derived from a reference label the way the official
        demo derives them (:mod:`segvol_rt.evaluation`). A box may be
        :data:`segvol_rt.pipeline.prompts.EMPTY_BOX` and points may carry label -1, as
        official ``generate_box`` / ``select_points`` produce them. ``options``:
        the :class:`Request` fields other than the prompts and the seed
        (``zoom_in``, ``probabilities``, ``keep_logits``, ``window_prompts``)."""
        targets = list(V.sequence(targets, "targets", "segvol_rt.pipeline.zoom.Target"))
        for i, t in enumerate(targets):
            check_zoom_target(t, f"targets[{i}]", self.config.spatial_size, self.max_points, self.config.embed_dim)
        unknown = [k for k in options if k not in {*FLAGS, "window_prompts"}]
        if unknown:
            raise SegVolError(f"segment_zoom_space takes no {', '.join(sorted(unknown))}")
        base = Request.of(options)  # the options' types, even without targets
        requests = [replace(base, seed=t.seed) for t in targets]
        vol = self._require_volume()
        if not requests:
            return []
        with self._resting():
            return self._flow().run(vol, requests, targets, StageClock())

    def segment_cases(
        self,
        scans: Iterable[str | os.PathLike[str]],
        targets: Sequence[Request | Mapping[str, Any] | str],
        reorient: str | None = None,
    ) -> Iterator[CaseResult]:
        """Segment the same ``targets`` (as :meth:`segment_many` takes them; prompts in
        each scan's voxel indices) in every scan of a cohort (NIfTI paths, DICOM
        folders or files), one scan at a time: yields a :class:`segvol_rt.pipeline.cases.CaseResult`
        per scan - its segmentations, or the one-line error of a scan that failed
        (the next one still runs). Each volume is released before the next."""
        from segvol_rt.pipeline.cases import iterate_cases

        return iterate_cases(self, scans, targets, reorient)

    def close(self) -> None:
        self.backend.close()
        self.release_volume()
