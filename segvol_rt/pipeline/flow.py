"""The per-request flow of the runtime (:class:`RequestFlow`): scan-space
prompts to zoom-out targets (:meth:`RequestFlow.model_targets`), the coarse
pass, the zoom-in and the scan-space results (:meth:`RequestFlow.run`,
:meth:`RequestFlow.finish`). Volumes are ``(D, H, W)`` in crop space until
the result, which is ``(I, J, K)`` in scan space."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from segvol_rt import ops
from segvol_rt.io import spec as S
from segvol_rt.ops import arrays as A
from segvol_rt.pipeline import prompts as P
from segvol_rt.pipeline import zoom as Z
from segvol_rt.pipeline.text_embeddings import TextEmbeddings
from segvol_rt.pipeline.volume import Volume
from segvol_rt.timing import StageClock
from segvol_rt.types import Request, Segmentation

if TYPE_CHECKING:
    from segvol_rt.io.config import SegVolConfig


@dataclass
class RequestFlow:
    """One call's work on ``backend`` for the model ``config``: prompts of at most
    ``max_points`` points, texts from ``texts``, zoom-in ``zoom`` settings;
    ``stage_end`` runs at the end of each timed stage and ``totals`` gathers
    the call's seconds (the runtime's cumulative clock)."""

    backend: Any
    config: SegVolConfig
    texts: TextEmbeddings
    max_points: int
    zoom: Z.ZoomSettings
    stage_end: Callable[[], None]
    totals: StageClock

    def run(
        self, vol: Volume, requests: Sequence[Request], model_targets: Sequence[Z.Target], timings: StageClock
    ) -> list[Segmentation]:
        """Coarse pass, zoom-in and paste for model-space targets (options from ``requests``)."""
        timings.on_exit = self.stage_end
        zoom_emb = vol.zoom_embedding_of(self.backend, timings)
        with timings.stage("decode_zoom_out"):
            low = Z.decode_batched(
                self.backend,
                [zoom_emb] * len(model_targets),
                [t.coarse_tokens() for t in model_targets],
                [t.text_embedding for t in model_targets],
                self.backend.preferred_batch(S.PROMPT_DECODER),
                self.config.embed_dim,
            )
            self.backend.rest()  # the decoder's run memory, before the upsampling allocates
        coarse, plans, found = self._plan(vol, requests, model_targets, low, timings)
        active = [i for i, p in enumerate(plans) if p is not None]
        fine: list[Any] = [None] * len(plans)
        if active:
            roi_logits = Z.zoom_in(
                self.backend,
                vol.crop_image,
                [p for p in plans if p is not None],
                [model_targets[i] for i in active],
                vol.windows,
                self.zoom,
                self.config.embed_dim,
                timings,
            )
            for i, lg in zip(active, roi_logits):
                fine[i] = lg
        results = []
        for i, (req, plan, ok) in enumerate(zip(requests, plans, found)):
            logits = coarse[i] if coarse[i] is not None else self._coarse_for_mask(vol, low[i], timings)
            results.append(self.finish(vol, req, logits, plan, fine[i], ok, timings))
            # let go of this target's volumes before the next target's exist
            del logits
            coarse[i] = fine[i] = None
        for name, sec in timings.as_dict().items():
            self.totals.seconds[name] += sec
        for res in results:
            res.timings = timings.as_dict()
        return results

    def _coarse(self, vol: Volume, low: Any, timings: StageClock) -> Any:
        """One target's crop logits (D, H, W) float32 from its low-res coarse logits."""
        with timings.stage("upsample_zoom_out"):
            return Z.coarse_crop_logits(low, self.config.spatial_size, vol.crop_image.shape)

    def _coarse_for_mask(self, vol: Volume, low: Any, timings: StageClock) -> Any:
        """What :meth:`finish` needs of a target's coarse pass for its mask alone: on
        the host the bool positive mask (D, H, W), never the float32 volume (a quarter
        of the bytes, the same voxels); on the device the crop logits."""
        if not A.is_host(self.backend.xp):
            return self._coarse(vol, low, timings)
        with timings.stage("upsample_zoom_out"):
            return ops.upsample_then_nearest_positive(low, self.config.spatial_size, vol.crop_image.shape)

    def _plan(
        self, vol: Volume, requests: Sequence[Request], model_targets: Sequence[Z.Target], low: Sequence[Any],
        timings: StageClock,
    ) -> tuple[list[Any], list[Z.ZoomInPlan | None], list[bool]]:
        """Per target: the zoom-in plan (None without zoom-in or foreground), whether
        the coarse pass found foreground, and its crop logits where they are kept.

        A target's crop logits are a float32 volume of the crop's size (80 MiB for a
        512x512x200 scan; gigabytes for eight targets of a long scan), so only those
        a request keeps or turns into probabilities are kept through the zoom-in (and
        on the device the last target's); :meth:`run` computes the others again when
        it finishes their target (the same operation on the same low-res logits: the
        same voxels, for the price of one upsampling; on the host only their positive
        mask, :meth:`_coarse_for_mask`)."""
        coarse: list[Any] = [None] * len(requests)
        plans: list[Z.ZoomInPlan | None] = []
        found = []
        zoom = self.zoom
        host = A.is_host(self.backend.xp)
        for i, (r, t, lg) in enumerate(zip(requests, model_targets, low)):
            c = self._coarse(vol, lg, timings)
            with timings.stage("plan_windows"):  # each request brings its own window prompts
                plan = (Z.plan_zoom_in(t, c, zoom.window, self.config.spatial_size, r.window_prompts, zoom.overlap)
                        if r.zoom_in else None)
                # "no foreground": the coarse pass has no voxel with sigmoid > 0.5
                found.append(plan is not None if r.zoom_in else ops.positive_box(c) is not None)
            plans.append(plan)
            if r.keep_logits or r.probabilities or (i == len(requests) - 1 and not host):
                coarse[i] = c
        return coarse, plans, found

    def model_targets(self, vol: Volume, requests: Sequence[Request], timings: StageClock) -> list[Z.Target]:
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
            embs = iter(self.texts.embeddings(self.backend, texts)) if texts else iter(())
        return [
            Z.Target(next(embs) if r.text is not None else None, mp.box_zoom, mp.points_zoom, r.seed)
            for r, mp in zip(requests, mapped)
        ]

    def finish(
        self,
        vol: Volume,
        req: Request,
        logits: Any,
        plan: Z.ZoomInPlan | None,
        roi_logits: Any,
        found: bool,
        timings: StageClock,
    ) -> Segmentation:
        """The scan-space result of crop logits (D, H, W) (their bool positive mask when
        the request wants the mask alone, :meth:`_coarse_for_mask`) and the zoom-in ROI logits
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
        if not req.on_device and not A.is_host(self.backend.xp):
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
