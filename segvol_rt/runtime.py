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
(:mod:`segvol_rt.pipeline.validate`, :class:`segvol_rt.pipeline.requests.Request`):
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from segvol_rt import ops
from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S
from segvol_rt.ops import arrays as A
from segvol_rt.pipeline import prompts as P
from segvol_rt.pipeline import validate as V
from segvol_rt.pipeline import zoom as Z
from segvol_rt.pipeline.caches import MIB, ByteLRU
from segvol_rt.pipeline.requests import FLAGS, BoxPrompt, PointsPrompt, Request, check_zoom_target, request_at

if TYPE_CHECKING:  # runtime types only: importing segvol_rt stays light
    from segvol_rt.backends.base import Backend
    from segvol_rt.io.artifacts import Artifacts
    from segvol_rt.io.tokenizer import ClipTokenizer
    from segvol_rt.pipeline.geometry import Geometry

# Default bound of the phrase cache: a full-size text embedding is 768 float32
# (3 KB), so 16 MiB keeps about 5,000 free phrases; names in the artifacts'
# table are never cached (the table holds them). The window cache's default is
# Z.DEFAULT_CACHE_BYTES (512 MiB).
DEFAULT_TEXT_CACHE_BYTES = 16 * MIB


@dataclass
class Segmentation:
    """One target's result.

    Arrays are numpy, or cupy arrays on a CUDA backend when the request
    asked for ``on_device``; their memory layout is unspecified (e.g. a
    transposed view on the host).

    Attributes:
        mask: uint8 ``(I, J, K)`` in scan space, 1 = target.
        probabilities: float32 ``(I, J, K)`` sigmoid of the logits in scan
            space (0 outside the crop), when asked for. (On the GPU the
            sigmoid's ``exp`` may differ from numpy's by an ulp or two.)
        roi: the zoom-in ROI in crop space (:class:`segvol_rt.pipeline.zoom.Roi`), or None.
        n_windows: zoom-in windows run for this target (0 without zoom-in).
        zoom_in_applied: the zoom-in stage ran and its logits were pasted.
        no_foreground: the coarse pass found no voxel with sigmoid > 0.5, so
            the (empty) coarse result stands.
        timings: seconds per stage of the call that produced this result
            (stages shared by several targets are reported to each).
        crop_logits: float32 crop-space logits ``(D, H, W)``, when kept.
        prompt: what was asked, for display.
    """

    mask: Any
    probabilities: Any = None
    roi: Z.Roi | None = None
    n_windows: int = 0
    zoom_in_applied: bool = False
    no_foreground: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    crop_logits: Any = None
    prompt: str = ""


@dataclass
class _Volume:
    """A preprocessed scan and its per-volume caches, in the backend's array
    module (device arrays on CUDA backends)."""

    scan_shape: tuple[int, int, int]
    affine: np.ndarray
    crop_image: Any  # (D, H, W) float32, numpy or cupy
    zoom_image: Any  # spatial_size float32, numpy or cupy
    geometry: Geometry
    windows: Z.EmbeddingCache  # bounded by the runtime's cache_bytes
    zoom_embedding: Any = None
    host: dict[str, np.ndarray] = field(default_factory=dict)  # downloaded copies, on demand

    def on_host(self, name: str) -> np.ndarray:
        """``crop_image`` / ``zoom_image`` as numpy (downloaded once from the device)."""
        if name not in self.host:
            self.host[name] = A.to_host(getattr(self, name))
        return self.host[name]


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
        self._volume: _Volume | None = None
        self._text_cache: ByteLRU[str] = ByteLRU(V.integer(text_cache_bytes, "text_cache_bytes", minimum=0))
        self._table: dict[str, np.ndarray] | None = None
        self._tokenizer: ClipTokenizer | None = None
        self._stats = Z.StageClock(on_exit=self._stage_end)
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
        """Read the manifest, check every file's hash (``verify``) and open a backend.

        ``backend``: auto, tensorrt, onnxruntime or torch; ``device``: auto, cpu
        or cuda; ``checkpoint``: the torch backend's checkpoint file;
        ``cache_bytes`` / ``text_cache_bytes``: the cache bounds (see the class doc);
        ``threads``: CPU threads of ONNX Runtime on the CPU and of torch (None: all cores);
        ``precision``: ``"fp32"`` or ``"fp16"``, the graph variant to run (None: fp32 on
        ONNX Runtime and torch, the built engines' on TensorRT; fp16 needs artifacts
        from ``segvol-rt export --precision fp16``)."""
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
        if verify:
            artifacts.verify()
        opened, reason = open_backend(artifacts, backend=backend, device=device, checkpoint=checkpoint, threads=threads,
                                      precision=precision)
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
        sha256 (from the artifacts manifest), backend, device, precision (the
        backend's, else fp32: ONNX Runtime and torch run float32) and CPU threads."""
        from segvol_rt import __version__

        manifest = getattr(self.artifacts, "manifest", None)  # None for artifacts that carry no manifest
        checkpoint = manifest.get("checkpoint") if isinstance(manifest, dict) else None
        precision = getattr(self.backend, "precision", None)
        return {
            "segvol_rt_version": __version__,
            "checkpoint_sha256": checkpoint.get("sha256") if isinstance(checkpoint, dict) else None,
            "backend": self.backend.name,
            "device": self.backend.device,
            "precision": precision if isinstance(precision, str) else "fp32",
            "threads": getattr(self.backend, "threads", None),
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
        the scan's voxel grid either way."""
        from segvol_rt.pipeline.geometry import model_orientation
        from segvol_rt.pipeline.preprocess import preprocess

        xp = self.xp
        reorient = model_orientation(V.optional_text(reorient, "reorient"), self.voxel_orientation)
        with self._stats.stage("read"):
            if isinstance(volume, (str, os.PathLike)):
                from segvol_rt.io.scans import read_any

                source = V.path(volume, "volume")
                if affine is not None:
                    raise SegVolError("affine: a NIfTI volume brings its own affine; pass affine only with an array volume")
                scan = read_any(source, series=V.optional_text(series, "series"))
                data, affine = scan.data, scan.affine
            else:
                if series is not None:
                    raise SegVolError("series: selects a DICOM series; pass it only with a DICOM folder or file")
                on_device = A.on_device(volume)
                data = V.real_volume(volume, "volume", on_device=True) if on_device else V.float32_scan(volume, "volume")
                affine = np.eye(4) if affine is None else V.affine(affine, "affine")
        if not A.is_host(xp) or A.on_device(data):
            with self._stats.stage("upload"):
                data = A.to_device(xp, data)
        with self._stats.stage("preprocess"):
            pre = preprocess(data, self.config.spatial_size, reorient=reorient, affine=affine)
            crop = xp.ascontiguousarray(pre.image, dtype=xp.float32)
            zoom = xp.ascontiguousarray(pre.zoom_image, dtype=xp.float32)
        self._volume = _Volume(
            scan_shape=tuple(int(s) for s in data.shape),  # type: ignore[arg-type]
            affine=np.asarray(affine),
            crop_image=crop,
            zoom_image=zoom,
            geometry=pre.geometry,
            windows=Z.EmbeddingCache(self._cache_bytes),
        )

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

    def _require_volume(self) -> _Volume:
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

    def _zoom_embedding(self, timings: Z.StageClock) -> Any:
        """The zoom-out image's embedding (C, d, h, w), encoded once per volume and
        shared by all targets; stays in the backend's array module."""
        vol = self._require_volume()
        if vol.zoom_embedding is None:
            with timings.stage("encode_zoom_out"):
                vol.zoom_embedding = self.backend.encode_image(vol.zoom_image[None, None])[0]
        return vol.zoom_embedding

    # -- text ----------------------------------------------------------------------
    def _known_names(self) -> dict[str, np.ndarray]:
        if self._table is None:
            from segvol_rt.io.vocabulary import normalize_name

            # artifacts without a table run every phrase through the text encoder;
            # a table that is listed but unreadable is an error, never a silent fallback
            if self.artifacts.has_text_table:
                names, table = self.artifacts.text_table()
            else:
                names, table = [], np.zeros((0, self.config.embed_dim), np.float32)
            self._table = {normalize_name(n): row for n, row in zip(names, table)}
        return self._table

    def text_embeddings(self, texts: Sequence[str]) -> list[np.ndarray]:
        """(C,) float32 per text (a list of non-empty strings): the table row of
        a known name, else the phrase cache, else the text encoder on the prompt
        template (one batched call for the new phrases, then cached)."""
        from segvol_rt.io.vocabulary import normalize_name

        texts = list(V.sequence(texts, "texts", "str"))
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise SegVolError(f"texts[{i}] must be a non-empty str, not {t!r:.60}")
        table = self._known_names()
        keys = [normalize_name(t) for t in texts]
        found: dict[str, np.ndarray] = {}  # this call's rows, whatever the cache evicts meanwhile
        for k in dict.fromkeys(keys):
            row = table[k] if k in table else self._text_cache.get(k)
            if row is not None:
                found[k] = row
        new = [k for k in dict.fromkeys(keys) if k not in found]
        if new:
            raw = {normalize_name(t): t.strip() for t in texts}
            found.update(self._encode_phrases(new, [raw[k] for k in new]))
        return [found[k] for k in keys]

    def _encode_phrases(self, keys: Sequence[str], phrases: Sequence[str]) -> dict[str, np.ndarray]:
        """Text-encoder rows (C,) float32 of ``phrases``, cached under ``keys``."""
        if self._tokenizer is None:
            self._tokenizer = self.artifacts.tokenizer()
        ids = self._tokenizer.encode_names(list(phrases), self.artifacts.prompt_template)
        limit = self._max_batch(S.TEXT_ENCODER)
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(keys), limit):
            # (B, C) floats: downloaded once per phrase, uploaded per decoder call
            emb = A.to_host(self.backend.encode_text(self.xp.asarray(ids[i : i + limit])))
            for k, e in zip(keys[i : i + limit], emb):
                out[k] = np.array(e, np.float32)  # a copy: not a view pinning the whole batch
                self._text_cache.put(k, out[k])
        return out

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
        timings = Z.StageClock()
        model_targets = self._model_targets(vol, requests, timings)
        return self._run(vol, requests, model_targets, timings)

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
        return self._run(vol, requests, targets, Z.StageClock()) if requests else []

    def _run(
        self, vol: _Volume, requests: Sequence[Request], model_targets: Sequence[Z.Target], timings: Z.StageClock
    ) -> list[Segmentation]:
        """Coarse pass, zoom-in and paste for model-space targets (options from ``requests``)."""
        timings.on_exit = self._stage_end
        zoom_emb = self._zoom_embedding(timings)
        with timings.stage("decode_zoom_out"):
            low = Z.decode_batched(
                self.backend,
                [zoom_emb] * len(model_targets),
                [t.coarse_tokens() for t in model_targets],
                [t.text_embedding for t in model_targets],
                self._max_batch(S.PROMPT_DECODER),
                self.config.embed_dim,
            )
        with timings.stage("upsample_zoom_out"):
            coarse = [Z.coarse_crop_logits(lg, self.config.spatial_size, vol.crop_image.shape) for lg in low]
        zoom = self.zoom_settings()  # each request brings its own window prompts
        with timings.stage("plan_windows"):
            plans = [
                Z.plan_zoom_in(t, c, zoom.window, self.config.spatial_size, r.window_prompts, zoom.overlap)
                if r.zoom_in
                else None
                for r, t, c in zip(requests, model_targets, coarse)
            ]
            # "no foreground": the coarse pass has no voxel with sigmoid > 0.5
            found = [p is not None if r.zoom_in else ops.positive_box(c) is not None
                     for r, p, c in zip(requests, plans, coarse)]
        active = [i for i, p in enumerate(plans) if p is not None]
        fine: list[Any] = [None] * len(plans)
        if active:
            roi_logits = Z.zoom_in(
                self.backend,
                vol.crop_image,
                [p for p in plans if p is not None],
                [model_targets[i] for i in active],
                vol.windows,
                zoom,
                self.config.embed_dim,
                timings,
            )
            for i, lg in zip(active, roi_logits):
                fine[i] = lg
        results = [self._finish(vol, *args, timings) for args in zip(requests, coarse, plans, fine, found)]
        for name, sec in timings.as_dict().items():
            self._stats.seconds[name] += sec
        for res in results:
            res.timings = timings.as_dict()
        return results

    def _model_targets(self, vol: _Volume, requests: Sequence[Request], timings: Z.StageClock) -> list[Z.Target]:
        """Validate scan-space prompts, map them to zoom-out space, embed the texts."""
        with timings.stage("prompts"):
            mapped = []
            for r in requests:
                box = None if r.box is None else P.parse_box(r.box)
                points = None if r.points is None else P.parse_points(r.points)
                P.validate_prompts(vol.scan_shape, r.text, box, points, self.max_points)
                mapped.append(P.to_model_space(vol.geometry, box, points))
        texts = [r.text for r in requests if r.text is not None]
        with timings.stage("text"):
            embs = iter(self.text_embeddings(texts)) if texts else iter(())
        return [
            Z.Target(next(embs) if r.text is not None else None, mp.box_zoom, mp.points_zoom, r.seed)
            for r, mp in zip(requests, mapped)
        ]

    def _finish(
        self,
        vol: _Volume,
        req: Request,
        logits: Any,
        plan: Z.ZoomInPlan | None,
        roi_logits: Any,
        found: bool,
        timings: Z.StageClock,
    ) -> Segmentation:
        """The scan-space result of crop logits (D, H, W) and the zoom-in ROI logits
        (or None): the mask straight from both (no paste, one pass on the GPU);
        the paste only when logits or probabilities are asked for."""
        roi_start = plan.roi.lo if plan is not None else (0, 0, 0)
        if roi_logits is not None and (req.keep_logits or req.probabilities):
            with timings.stage("paste"):
                ops.paste(logits, roi_logits, roi_start)
            roi_logits = None
        with timings.stage("postprocess"):
            perm, flips, origin = vol.geometry.scan_mapping()
            mask = ops.scan_mask(logits, vol.scan_shape, perm, flips, origin, roi_logits, roi_start)
            probs = vol.geometry.crop_to_scan(ops.sigmoid(logits)) if req.probabilities else None
            kept = logits if req.keep_logits else None
        if not req.on_device and not A.is_host(self.xp):
            with timings.stage("download"):
                mask, probs, kept = A.to_host(mask), A.to_host(probs), A.to_host(kept)
        return Segmentation(
            mask=mask,
            probabilities=probs,
            roi=None if plan is None else plan.roi,
            n_windows=0 if plan is None else len(plan.windows),
            zoom_in_applied=plan is not None,
            no_foreground=not found,
            crop_logits=kept,
            prompt=req.describe(),
        )

    def close(self) -> None:
        self.backend.close()
        self.release_volume()
