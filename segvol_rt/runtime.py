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
and from the text encoder otherwise (cached per phrase). ``release_volume()``
frees a scan and its embeddings (host or GPU memory) while the backend stays
open; ``clear_window_cache()`` forgets only the window embeddings.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segvol_rt import ops
from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S
from segvol_rt.ops import arrays as A
from segvol_rt.pipeline import prompts as P
from segvol_rt.pipeline import zoom as Z

if TYPE_CHECKING:  # runtime types only: importing segvol_rt stays light
    from segvol_rt.backends.base import Backend
    from segvol_rt.io.artifacts import Artifacts
    from segvol_rt.io.tokenizer import ClipTokenizer
    from segvol_rt.pipeline.geometry import Geometry

# A box prompt: "i0,j0,k0,i1,j1,k1" or six ints, inclusive, scan voxel indices.
BoxPrompt = str | Sequence[int]
# Point prompts: "i,j,k[,label];..." or [(i, j, k[, label]), ...] (label 1 positive, 0 negative).
PointsPrompt = str | Sequence[Sequence[int]] | P.Points


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


@dataclass(frozen=True)
class Request:
    """One target of :meth:`SegVolRuntime.segment_many` (scan-space prompts)."""

    text: str | None = None
    box: BoxPrompt | None = None  # "i0,j0,k0,i1,j1,k1" or 6 ints, inclusive
    points: PointsPrompt | None = None  # "i,j,k[,label];..." or [(i, j, k[, label]), ...]
    zoom_in: bool = True
    probabilities: bool = False
    seed: int = 0
    keep_logits: bool = False
    on_device: bool = False  # keep the outputs on the GPU (cupy) instead of downloading them
    window_prompts: str = "official"  # or "aligned": see segvol_rt.pipeline.zoom (scans smaller than a window)

    def __post_init__(self) -> None:
        Z.check_window_prompts(self.window_prompts)

    @classmethod
    def of(cls, item: Request | Mapping[str, Any] | str) -> Request:
        if isinstance(item, Request):
            return item
        if isinstance(item, str):
            return cls(text=item)
        if isinstance(item, Mapping):
            unknown = set(item) - set(cls.__dataclass_fields__)
            if unknown:
                raise SegVolError(f"unknown target fields {sorted(unknown)}")
            return cls(**item)
        raise SegVolError(f"a target is a name, a mapping or a Request, not {type(item).__name__}")

    def describe(self) -> str:
        parts = [f"text={self.text!r}"] if self.text is not None else []
        if self.box is not None:
            parts.append(f"box={self.box}")
        if self.points is not None:
            parts.append(f"points={self.points}")
        return ", ".join(parts)


@dataclass
class _Volume:
    """A preprocessed scan and its per-volume caches, in the backend's array
    module (device arrays on CUDA backends)."""

    scan_shape: tuple[int, int, int]
    affine: np.ndarray
    crop_image: Any  # (D, H, W) float32, numpy or cupy
    zoom_image: Any  # spatial_size float32, numpy or cupy
    geometry: Geometry
    zoom_embedding: Any = None
    windows: Z.EmbeddingCache = field(default_factory=Z.EmbeddingCache)
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
    """

    def __init__(self, artifacts: Artifacts, backend: Backend, backend_reason: str = ""):
        self.artifacts = artifacts
        self.config = artifacts.config
        self.backend = backend
        self.backend_reason = backend_reason
        self._volume: _Volume | None = None
        self._text_cache: dict[str, np.ndarray] = {}
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
    ) -> SegVolRuntime:
        """Read the manifest, check every file's hash (``verify``) and open a backend."""
        from segvol_rt.backends.select import open_backend
        from segvol_rt.io.artifacts import Artifacts

        artifacts = Artifacts.load(artifacts_dir)
        if verify:
            artifacts.verify()
        opened, reason = open_backend(artifacts, backend=backend, device=device, checkpoint=checkpoint)
        return cls(artifacts, opened, reason)

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
        """Seconds per stage since load, window-cache counters, and the GPU
        memory high-water marks (:class:`segvol_rt.ops.arrays.GpuMemory`; None on
        CPU backends) sampled at stage ends since load."""
        out: dict[str, Any] = {"timings": self._stats.as_dict()}
        memory = self._memory.as_dict() if self._memory is not None else A.GpuMemory(np).as_dict()
        out.update(device="cpu" if A.is_host(self.xp) else "cuda", **memory)
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
    ) -> None:
        """Preprocess a scan (a NIfTI path, or a float ``(I, J, K)`` array in scan
        space with its 4x4 ``affine``, identity by default) once for all targets.

        On a CUDA backend the scan is uploaded once (a cupy array is used as it
        is) and preprocessed on the GPU; the crop and zoom-out images stay there.

        ``reorient``: None (official: no reorientation) or axis codes such as "RAS"."""
        from segvol_rt.pipeline.preprocess import preprocess

        xp = self.xp
        with self._stats.stage("read"):
            if isinstance(volume, (str, os.PathLike)):
                from segvol_rt.io.nifti import read_scan

                scan = read_scan(Path(volume))
                data, affine = scan.data, scan.affine
            else:
                data = volume if A.on_device(volume) else np.asarray(volume, dtype=np.float32)
                if data.ndim != 3:
                    raise SegVolError(f"volume must be 3D (I, J, K), got shape {data.shape}")
                affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
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
            self._volume.windows = Z.EmbeddingCache()

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

            try:
                names, table = self.artifacts.text_table()
            except SegVolError:
                names, table = [], np.zeros((0, self.config.embed_dim), np.float32)
            self._table = {normalize_name(n): row for n, row in zip(names, table)}
        return self._table

    def text_embeddings(self, texts: Sequence[str]) -> list[np.ndarray]:
        """(C,) float32 per text: the table row of a known name, else the text
        encoder on the prompt template (one batched call for the new phrases)."""
        from segvol_rt.io.vocabulary import normalize_name

        table = self._known_names()
        keys = [normalize_name(t) for t in texts]
        new = list(dict.fromkeys(k for k in keys if k not in table and k not in self._text_cache))
        if new:
            if self._tokenizer is None:
                self._tokenizer = self.artifacts.tokenizer()
            raw = {normalize_name(t): t.strip() for t in texts}
            ids = self._tokenizer.encode_names([raw[k] for k in new], self.artifacts.prompt_template)
            limit = self._max_batch(S.TEXT_ENCODER)
            for i in range(0, len(new), limit):
                # (B, C) floats: downloaded once per phrase, uploaded per decoder call
                emb = A.to_host(self.backend.encode_text(self.xp.asarray(ids[i : i + limit])))
                for k, e in zip(new[i : i + limit], emb):
                    self._text_cache[k] = np.asarray(e, np.float32)
        return [table[k] if k in table else self._text_cache[k] for k in keys]

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
        zoom-out encoding, window encodings and batched graph calls."""
        vol = self._require_volume()
        requests = [Request.of(t) for t in targets]
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
        vol = self._require_volume()
        size = np.asarray(self.config.spatial_size)
        for t in targets:
            if t.box_zoom is not None and tuple(t.box_zoom) != P.EMPTY_BOX:
                lo, hi = np.asarray(t.box_zoom[:3]), np.asarray(t.box_zoom[3:])
                if (lo < 0).any() or (hi >= size).any() or (lo > hi).any():
                    raise SegVolError(f"zoom-out box {tuple(t.box_zoom)} is empty or outside {tuple(size)}")
            if t.points_zoom is not None and len(t.points_zoom) > self.max_points:
                raise SegVolError(f"{len(t.points_zoom)} points given; the artifacts take at most {self.max_points}")
        unknown = set(options) - {"zoom_in", "probabilities", "keep_logits", "on_device", "window_prompts"}
        if unknown:
            raise SegVolError(f"segment_zoom_space takes no {', '.join(sorted(unknown))}")
        requests = [Request.of({**options, "seed": t.seed}) for t in targets]
        return self._run(vol, requests, list(targets), Z.StageClock()) if requests else []

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
