"""The runtime's current volume: a preprocessed scan and its per-volume caches
(:class:`Volume`), and how a file or an array becomes one (:func:`load_volume`:
read, upload to the backend's array module, preprocess). Scan space is
``(I, J, K)``; the crop and zoom-out images are ``(D, H, W)``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segvol_rt import validate as V
from segvol_rt.errors import SegVolError
from segvol_rt.ops import arrays as A
from segvol_rt.ops.dispatch import array_namespace
from segvol_rt.pipeline import zoom as Z
from segvol_rt.pipeline.geometry import Geometry
from segvol_rt.pipeline.preprocess import preprocess
from segvol_rt.timing import StageClock


@dataclass
class Volume:
    """A preprocessed scan and its per-volume caches, in the backend's array
    module (device arrays on CUDA backends)."""

    scan_shape: tuple[int, int, int]
    affine: np.ndarray
    crop_image: Any  # (D, H, W) float32, numpy or cupy
    zoom_image: Any  # spatial_size float32, numpy or cupy
    geometry: Geometry
    windows: Z.EmbeddingCache  # bounded by cache_bytes
    zoom_embedding: Any = None
    host: dict[str, np.ndarray] = field(default_factory=dict)  # downloaded copies, on demand

    def on_host(self, name: str) -> np.ndarray:
        """``crop_image`` / ``zoom_image`` as numpy (downloaded once from the device)."""
        if name not in self.host:
            self.host[name] = A.to_host(getattr(self, name))
        return self.host[name]

    def zoom_embedding_of(self, backend: Any, timings: StageClock) -> Any:
        """The zoom-out image's embedding (C, d, h, w), encoded by ``backend`` once per
        volume and shared by all targets; stays in the backend's array module."""
        if self.zoom_embedding is None:
            with timings.stage("encode_zoom_out"):
                self.zoom_embedding = backend.encode_image(self.zoom_image[None, None])[0]
        return self.zoom_embedding


def load_volume(
    volume: str | os.PathLike[str] | np.ndarray,
    affine: np.ndarray | None,
    reorient: str | None,
    series: str | None,
    xp: Any,
    spatial_size: Sequence[int],
    cache_bytes: int,
    clock: StageClock,
    overwrite_input: bool = False,
) -> Volume:
    """A :class:`Volume` of a NIfTI path, a DICOM folder or file (``series``: its
    SeriesInstanceUID) or an ``(I, J, K)`` array with its 4x4 ``affine``, in the
    array module ``xp`` (uploaded once to a GPU), preprocessed for a model window
    of ``spatial_size``; the window cache bounded by ``cache_bytes``. Stages
    ``read``, ``upload`` and ``preprocess`` are timed on ``clock``. Arguments
    as :meth:`segvol_rt.runtime.SegVolRuntime.set_volume` takes them.

    The scan is normalised in place (no second scan-sized float32 array) when
    its float32 array is private: read here from a file, converted from the
    caller's dtype or layout, or the caller said ``overwrite_input``."""
    V.optional_text(reorient, "reorient")
    with clock.stage("read"):
        if isinstance(volume, (str, os.PathLike)):
            from segvol_rt.io.scans import read_any

            source = V.path(volume, "volume")
            if affine is not None:
                raise SegVolError("affine: a NIfTI volume brings its own affine; pass affine only with an array volume")
            scan = read_any(source, series=V.optional_text(series, "series"))
            data, affine, overwrite_input = scan.data, scan.affine, True
        else:
            if series is not None:
                raise SegVolError("series: selects a DICOM series; pass it only with a DICOM folder or file")
            on_device = A.on_device(volume)
            data = V.real_volume(volume, "volume", on_device=True) if on_device else V.float32_scan(volume, "volume")
            affine = np.eye(4) if affine is None else V.affine(affine, "affine")
            overwrite_input = overwrite_input or _private_copy(data, volume)
    if not A.is_host(xp) or A.on_device(data):
        with clock.stage("upload"):
            data = A.to_device(xp, data)
    with clock.stage("preprocess"):
        pre = preprocess(data, spatial_size, reorient=reorient, affine=affine, overwrite_input=overwrite_input)
        crop = xp.ascontiguousarray(pre.image, dtype=xp.float32)
        zoom = xp.ascontiguousarray(pre.zoom_image, dtype=xp.float32)
    return Volume(
        scan_shape=tuple(int(s) for s in data.shape),  # type: ignore[arg-type]
        affine=np.asarray(affine),
        crop_image=crop,
        zoom_image=zoom,
        geometry=pre.geometry,
        windows=Z.EmbeddingCache(cache_bytes),
    )


def _private_copy(data: Any, given: Any) -> bool:
    """Whether the checked ``data`` is a new array rather than the caller's ``given``
    or a view of its memory (a cast, a copy to Fortran order)."""
    if data is given:
        return False
    xp = array_namespace(data)
    return xp is not array_namespace(given) or not xp.may_share_memory(data, given)
