"""NIfTI input and output in **scan** space (voxel indices ``(i, j, k)`` as nibabel
loads them; 3D Slicer's IJK).

Reading is gzip-bound, so ``.nii.gz`` files are decompressed in one call with
ISA-L (``isal.igzip``, about 2x zlib) and the voxels are viewed straight from
that buffer; nibabel parses the header and supplies the scaling rule, so values
are those of ``np.asanyarray(img.dataobj)`` cast to float32 (what MONAI's
``LoadImage`` gives the official pipeline). Uncompressed ``.nii`` files are
memory-mapped by nibabel.

Arrays are Fortran-ordered, as in the file: ``scan.data.T`` is a C-contiguous
``(k, j, i)`` = model-space ``(D, H, W)`` view, no copy. Likewise a mask
computed in model space is written fastest as ``mask_dhw.T``.

Runtime dependencies: numpy, nibabel (isal optional, zlib otherwise).
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt._optional import require
from segvol_rt.errors import SegVolError, one_line
from segvol_rt.io import nifti_header as H
from segvol_rt.io.atomic import atomic_write_bytes
from segvol_rt.io.outputs import same_file
from segvol_rt.io.scan import Scan, scaled
from segvol_rt.io.volume_checks import check_scaled_range, check_values

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_GZIP_MAGIC = b"\x1f\x8b"


# -- reading ------------------------------------------------------------------
def _gunzip(raw: bytes) -> bytes:
    try:
        from isal import igzip
    except ImportError:  # isal is a dependency, but zlib is always there
        return zlib.decompress(raw, wbits=31)
    return igzip.decompress(raw)


def _gz_load(path: Path, klass: Any) -> tuple[Any, np.ndarray]:
    """Header image and raw (unscaled) voxels of a ``.nii.gz``, decompressed in one call."""
    try:
        raw = _gunzip(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - zlib, gzip and isal each raise their own types
        raise ValueError(f"corrupt or truncated gzip data ({exc})") from exc
    img = klass.from_bytes(raw)
    if img.header["magic"].tobytes()[:3] not in (b"n+1", b"n+2"):
        raise ValueError("header of a .hdr/.img pair, not a single-file NIfTI")
    proxy = img.dataobj
    count = int(np.prod(proxy.shape, dtype=np.int64))
    if len(raw) < proxy.offset + count * proxy.dtype.itemsize:
        raise ValueError("file is shorter than its header says (truncated)")
    arr = np.ndarray(proxy.shape, dtype=proxy.dtype, buffer=raw, offset=proxy.offset, order="F")
    return img, arr


def _isgzip_bytes(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _nibabel_load(path: Path) -> tuple[Any, np.ndarray]:
    nib = require("nibabel")
    img = nib.load(str(path))
    return img, np.asarray(img.dataobj.get_unscaled())


def _unreadable(what: str, p: Path, exc: BaseException) -> SegVolError:
    if isinstance(exc, OSError) and exc.strerror:
        return SegVolError(f"cannot read {what} {p}: {exc.strerror}")
    return SegVolError(f"cannot read {what} {p}: {one_line(exc)}")


def _checked_header(p: Path, what: str, file_size: int) -> tuple[Any, bool, tuple[int, ...]]:
    """(image class, gzip?, 3D shape) once the header passed every check of
    :mod:`segvol_rt.io.nifti_header`; nothing is allocated before that."""
    try:
        gz = _isgzip_bytes(p)
        klass, header = H.read_header(p, gz)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unreadable file
        raise _unreadable(what, p, exc) from exc
    shape = H.volume_shape(header, p, what)
    H.check_memory(header, shape, p, what, file_size, gz)
    H.check_geometry(header, p, what)
    H.check_scaling(header, p, what)
    return klass, gz, shape


def _load(path: str | os.PathLike[str], what: str) -> tuple[Any, np.ndarray, Path, tuple[str, ...]]:
    """(nibabel image, raw voxels with trailing singleton axes beyond 3 dropped, path,
    notes on header fixes). The header is checked before the voxels are read;
    nibabel's log messages are captured, never printed."""
    p = Path(path)
    file_size = H.check_path(p, what)
    if not p.name.lower().endswith(NIFTI_SUFFIXES):
        raise SegVolError(f"{what} {p} is not a NIfTI file (expected .nii or .nii.gz)")
    with H.nibabel_messages() as messages:
        klass, gz, shape = _checked_header(p, what, file_size)
        try:
            # nibabel memory-maps uncompressed files, faster than reading them. For
            # .nii.gz it is no fallback: indexed_gzip returns garbage for some
            # corrupt streams instead of failing.
            img, arr = _gz_load(p, klass) if gz else _nibabel_load(p)
        except Exception as exc:  # noqa: BLE001 - any failure here means an unreadable file
            raise _unreadable(what, p, exc) from exc
    if arr.size != math.prod(shape):
        raise SegVolError(f"cannot read {what} {p}: the voxels do not match the header's shape {shape}")
    return img, arr.reshape(shape, order="F"), p, H.notes_from(messages, p)


def _scale_params(img: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """nibabel's slope/intercept for this image, or None when they leave values unchanged."""
    slope, inter = np.asanyarray(img.dataobj.slope), np.asanyarray(img.dataobj.inter)
    if slope == 1 and inter == 0:
        return None
    return slope, inter


def read_scan(path: str | os.PathLike[str]) -> Scan:
    """Read a 3D CT volume as float32 ``(I, J, K)`` in scan space, validated.

    The header is checked first (path kind, extent, memory, geometry, scaling;
    see :mod:`segvol_rt.io.nifti_header`), then the values (finite, not
    constant, within the float32 statistics' range). Every failure is one
    :class:`SegVolError` line naming the file; nibabel prints nothing."""
    img, raw, p, notes = _load(path, "scan")
    scale = _scale_params(img)
    if scale is not None:
        check_scaled_range(raw, float(scale[0]), float(scale[1]), p, "scan")
    data = scaled(raw, scale, np.float32)
    check_values(data, raw, exact_ints=scale is None and raw.dtype.kind in "biu", p=p)
    affine = np.array(img.affine, dtype=np.float64)
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return Scan(data=data, affine=affine, spacing=spacing, source=f"NIfTI file {p}", path=p,  # type: ignore[arg-type]
                notes=notes, nifti_header=img.header.copy())


def nifti_header_for(scan: Scan) -> Any:
    """A NIfTI header for an image on ``scan``'s grid: a copy of the scan's own
    when it came from NIfTI, else a NIfTI-1 header made from its affine
    (qform and sform, code 1: scanner) and spacing, in mm."""
    if scan.nifti_header is not None:
        return scan.nifti_header.copy()
    header = require("nibabel").Nifti1Header()
    header.set_data_shape(scan.shape)
    header.set_qform(scan.affine, code=1)
    header.set_sform(scan.affine, code=1)
    header.set_zooms(scan.spacing)
    header.set_xyzt_units("mm", "sec")
    return header


def parse_label_spec(spec: str) -> tuple[Path, int]:
    """``"LABEL.nii.gz:ID"`` -> (path, ID); the ID is a positive integer."""
    text = str(spec)
    path, sep, ident = text.rpartition(":")
    if not sep or not path:
        raise SegVolError(f"label {text!r} must be given as LABEL.nii.gz:ID (e.g. seg.nii.gz:1)")
    try:
        label_id = int(ident.strip())
    except ValueError:
        raise SegVolError(f"label {text!r}: ID {ident!r} is not an integer (expected LABEL.nii.gz:ID)") from None
    if label_id < 1:
        raise SegVolError(f"label {text!r}: ID must be a positive integer (0 is background)")
    return Path(path), label_id


def read_label(path_spec: str, scan: Scan | None = None) -> tuple[np.ndarray, int]:
    """Label map ``(I, J, K)`` (integer, Fortran-ordered) and the label ID from ``"LABEL.nii.gz:ID"``.

    With ``scan``, the label map must have its shape and affine. The ID must
    occur in the map.
    """
    path, label_id = parse_label_spec(path_spec)
    img, raw, p, _ = _load(path, "label map")
    labels = _integer_labels(raw, _scale_params(img), p)
    if scan is not None:
        _check_same_grid(labels.shape, np.asarray(img.affine), scan, p)
    if not np.any(labels == label_id):
        present = np.unique(labels)
        present = present[present != 0]
        shown = ", ".join(str(int(v)) for v in present[:20]) + (" ..." if present.size > 20 else "")
        raise SegVolError(f"label {label_id} does not occur in {p} (labels present: {shown or 'none'})")
    return labels, label_id


def _integer_labels(raw: np.ndarray, scale: tuple[np.ndarray, np.ndarray] | None, p: Path) -> np.ndarray:
    if scale is None and raw.dtype.kind in "biu":
        return raw.astype(raw.dtype.newbyteorder("="), order="F")
    values = scaled(raw, scale, np.float64)
    if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
        raise SegVolError(f"label map {p} holds non-integer values; expected integer labels")
    return values.astype(np.int32, order="F")


def _check_same_grid(shape: tuple[int, ...], affine: np.ndarray, scan: Scan, p: Path) -> None:
    if tuple(shape) != scan.shape:
        raise SegVolError(f"label map {p} has shape {tuple(shape)} but the scan has {scan.shape}")
    if not np.allclose(affine, scan.affine, rtol=1e-4, atol=1e-3):
        raise SegVolError(f"label map {p} and the scan have different affines (voxel -> world); not the same grid")


# -- writing ------------------------------------------------------------------
def _output_path(path: str | os.PathLike[str], like: Scan | None) -> Path:
    p = Path(path)
    if not p.name.lower().endswith(NIFTI_SUFFIXES):
        raise SegVolError(f"output {p} must end in .nii or .nii.gz")
    if like is not None and like.path is not None and same_file(p, Path(like.path)):
        raise SegVolError(f"refusing to overwrite the input scan {like.path} with a mask")
    if p.is_dir():
        raise SegVolError(f"output {p} is a directory")
    _make_parent(p)
    return p


def _make_parent(p: Path) -> None:
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SegVolError(f"cannot create the output folder {p.parent}: {exc.strerror or exc}") from exc


def _write(p: Path, data: bytes) -> Path:
    """Atomic write; OS failures (permissions, full disk) become one-line errors."""
    try:
        return atomic_write_bytes(p, data)
    except OSError as exc:
        raise SegVolError(f"cannot write {p}: {exc.strerror or exc}") from exc


def _as_uint8_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asanyarray(mask)
    if tuple(arr.shape) != tuple(shape):
        raise SegVolError(f"mask has shape {tuple(arr.shape)} but the scan has {tuple(shape)}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "b":
        return arr.view(np.uint8)
    if arr.dtype.kind not in "iu":
        raise SegVolError(f"mask must be boolean or integer, got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise SegVolError("mask values must lie in 0..255 to be written as uint8")
    return arr.astype(np.uint8)


def _mask_image(mask: np.ndarray, like: Scan, extra_header: Mapping[str, Any] | None) -> Any:
    """uint8 image on the scan's grid: its header, with exact (unscaled) values."""
    nib = require("nibabel")
    header = nifti_header_for(like)
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    # The CT's display window would hide a 0/1 mask in viewers.
    header["cal_min"], header["cal_max"] = 0, 0
    header["descrip"] = b"segvol-rt mask"
    for key, value in (extra_header or {}).items():
        if key not in header.keys():  # noqa: SIM118 - a NIfTI header is no Mapping
            raise SegVolError(f"{key!r} is not a NIfTI header field")
        try:
            header[key] = value
        except (TypeError, ValueError) as exc:
            raise SegVolError(f"cannot set NIfTI header field {key!r} to {value!r}: {exc}") from exc
    klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    return klass(mask, like.affine, header=header)


def write_mask(
    path: str | os.PathLike[str],
    mask: Any,
    like: Scan,
    extra_header: Mapping[str, Any] | None = None,
) -> Path:
    """Write a uint8 mask ``(I, J, K)`` in scan space with the input's affine and header.

    Atomic (temporary file + rename); ``.nii.gz`` is compressed with ISA-L when
    available. Never overwrites ``like.path``. A Fortran-ordered mask (e.g.
    ``mask_dhw.T``) avoids a transpose while serialising.
    """
    p = _output_path(path, like)
    return _write(p, mask_bytes(mask, like, p.name.lower().endswith(".gz"), extra_header))


def mask_bytes(mask: Any, like: Scan, gz: bool, extra_header: Mapping[str, Any] | None = None) -> bytes:
    """The file :func:`write_mask` writes, as bytes (gzip-compressed with ``gz``), to stage in an output set."""
    data = _mask_image(_as_uint8_mask(mask, like.shape), like, extra_header).to_bytes()
    return gzip_bytes(data) if gz else data


def gzip_bytes(data: bytes) -> bytes:
    """``data`` gzip-compressed (ISA-L when installed: several times faster than zlib)."""
    try:
        from isal import igzip
    except ImportError:
        import gzip

        return gzip.compress(data, compresslevel=1)
    return igzip.compress(data, compresslevel=1)


def write_json_sidecar(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically; numpy values become plain numbers/lists."""
    p = Path(path)
    data = json_bytes(obj, p)
    _make_parent(p)
    return _write(p, data)


def json_bytes(obj: Any, path: str | os.PathLike[str]) -> bytes:
    """The file :func:`write_json_sidecar` writes, as UTF-8 bytes; ``path`` names it in errors."""
    try:
        text = json.dumps(obj, indent=2, default=json_default)
    except (TypeError, ValueError) as exc:
        raise SegVolError(f"cannot write {path} as JSON: {exc}") from exc
    return (text + "\n").encode("utf-8")


def json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
