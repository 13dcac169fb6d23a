"""Checks of a NIfTI file before its voxels are read (used by :mod:`segvol_rt.io.nifti`).

Everything here looks at the path and at the fixed-size header block alone, so
a bad file is refused before any memory is allocated or any work is done:

* the path: missing, a directory, a FIFO, a device (each said as it is);
* the extent: 3D after dropping trailing singleton axes, no zero extent;
* the memory the read needs, against what the machine has available;
* the geometry: the voxel size (``pixdim``), the sform and qform in use and
  the voxel -> world affine nibabel derives from them must be finite, and the
  affine non-degenerate (a singular 3x3 part cannot be oriented or written);
* the scaling: ``scl_slope``/``scl_inter`` finite where nibabel applies them,
  and the scaled values finite in float32 and small enough for the official
  float32 intensity statistics.

nibabel reports header problems it fixes on the ``nibabel.global`` logger,
which prints to stderr. :func:`nibabel_messages` captures them (per thread)
for the duration of a read; the ones that change how the scan is placed come
back in our own words (:func:`notes_from`), the rest are dropped.

Runtime code: numpy; nibabel is imported lazily.
"""

from __future__ import annotations

import gzip
import logging
import math
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt._optional import require
from segvol_rt.errors import SegVolError
from segvol_rt.io.volume_checks import affine_problem, available_memory

_HEADER_BYTES = 540  # NIfTI-2's fixed header; NIfTI-1's 348 bytes are a prefix of it
_F32_MAX = float(np.finfo(np.float32).max)


# -- the path ---------------------------------------------------------------------------------
_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_path(p: Path, what: str) -> int:
    """The size in bytes of the regular file ``p``; else a :class:`SegVolError`
    saying what ``p`` is (missing, a directory, a FIFO, a device, unreadable)."""
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        broken = " (a broken symbolic link)" if p.is_symlink() else ""
        raise SegVolError(f"{what} {p} does not exist{broken}") from None
    except OSError as exc:
        raise SegVolError(f"{what} {p} cannot be accessed: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise SegVolError(f"{what} {p} is a directory, not a NIfTI file")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
        raise SegVolError(f"{what} {p} is not a regular file (it is {kind})")
    return int(st.st_size)


# -- nibabel's log messages -------------------------------------------------------------------
_capture = threading.local()
_install_lock = threading.Lock()
_installed = False


class _CaptureFilter(logging.Filter):
    """Swallows the records of threads inside :func:`nibabel_messages`, keeping their text."""

    def filter(self, record: logging.LogRecord) -> bool:
        sink = getattr(_capture, "sink", None)
        if sink is None:
            return True
        sink.append(record.getMessage())
        return False


def _install() -> None:
    global _installed
    with _install_lock:
        if not _installed:
            require("nibabel")  # creates the logger with its stderr handler
            logging.getLogger("nibabel.global").addFilter(_CaptureFilter())
            _installed = True


@contextmanager
def nibabel_messages() -> Iterator[list[str]]:
    """Collect, instead of printing, what nibabel logs in this thread meanwhile."""
    _install()
    outer = getattr(_capture, "sink", None)
    sink: list[str] = []
    _capture.sink = sink
    try:
        yield sink
    finally:
        _capture.sink = outer


# nibabel message -> ours, for the fixes that change where the scan lies or its voxel size.
_MEANINGFUL = (
    ("pixdim[1,2,3] should be non-zero", "the header's voxel size (pixdim) has zeros; read as 1 mm, as nibabel does"),
    ("pixdim[1,2,3] should be positive", "the header's voxel size (pixdim) is negative; its absolute value is used, as nibabel does"),
    ("sform_code", "the header's sform_code is not a NIfTI code; the sform is ignored, as nibabel does"),
    ("qform_code", "the header's qform_code is not a NIfTI code; the qform is ignored, as nibabel does"),
)


def notes_from(messages: list[str], p: Path) -> tuple[str, ...]:
    """Our wording of the nibabel messages that matter (each once); the others
    (e.g. an SPM-incompatible vox_offset) are dropped."""
    notes: list[str] = []
    for message in messages:
        for key, ours in _MEANINGFUL:
            if key in message and f"{p}: {ours}" not in notes:
                notes.append(f"{p}: {ours}")
    return tuple(notes)


# -- the header block -------------------------------------------------------------------------
def _image_class(block: bytes) -> Any:
    """nibabel single-file image class from the header size field (either byte order)."""
    nib = require("nibabel")
    if len(block) < 4:
        return None
    sizes = {int.from_bytes(block[:4], "little"), int.from_bytes(block[:4], "big")}
    if 348 in sizes:
        return nib.Nifti1Image
    if 540 in sizes:
        return nib.Nifti2Image
    return None


def _prefix(p: Path, gz: bool) -> bytes:
    if not gz:
        with open(p, "rb") as fh:
            return fh.read(_HEADER_BYTES)
    try:
        with gzip.open(p, "rb") as fh:  # handles concatenated members; stops after the header
            return fh.read(_HEADER_BYTES)
    except Exception as exc:  # noqa: BLE001 - gzip, zlib and EOF errors share no base class
        raise ValueError(f"corrupt or truncated gzip data ({exc})") from exc


def read_header(p: Path, gz: bool) -> tuple[Any, Any]:
    """(image class, header) parsed from the fixed-size block at the start of ``p``
    (decompressing only that much of a ``.nii.gz``). nibabel's checks run, and
    raise for what it cannot fix; call inside :func:`nibabel_messages`."""
    block = _prefix(p, gz)
    klass = _image_class(block)
    if klass is None:
        raise ValueError("not a NIfTI-1 or NIfTI-2 header")
    size = klass.header_class.template_dtype.itemsize
    if len(block) < size:
        raise ValueError(f"the file ends inside its {size}-byte header (truncated)")
    return klass, klass.header_class(block[:size], check=True)


def volume_shape(header: Any, p: Path, what: str) -> tuple[int, ...]:
    """The header's shape with trailing singleton axes beyond 3 dropped: 3D, no zero extent."""
    shape = tuple(int(s) for s in header.get_data_shape())
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise SegVolError(f"{what} {p} has shape {shape}; a 3D volume is needed")
    if min(shape) < 1:
        raise SegVolError(f"{what} {p}: the header declares an empty extent {_dims(shape)}; there are no voxels to read")
    dtype = header.get_data_dtype()
    if dtype.kind not in "biuf":
        raise SegVolError(f"{what} {p} has voxel type {dtype}, expected integers or floats")
    return shape


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


# -- memory -----------------------------------------------------------------------------------
def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # unreachable


def check_memory(header: Any, shape: tuple[int, ...], p: Path, what: str, file_size: int, gz: bool) -> None:
    """Refuse a declared volume that cannot be held, before allocating it; an
    uncompressed file shorter than its header says is refused as truncated.

    A ``.nii.gz`` read holds the compressed bytes, the decompressed file and the
    float32 volume at once; a ``.nii`` is memory-mapped, so the volume alone counts."""
    dtype = header.get_data_dtype()
    count = math.prod(shape)  # Python ints: NIfTI-2 dimensions could overflow int64
    stored = count * dtype.itemsize
    offset = int(header.get_data_offset())
    if not gz and file_size < offset + stored:
        raise SegVolError(
            f"cannot read {what} {p}: the file is shorter than its header says (truncated: {file_size} bytes, but the "
            f"header declares {_dims(shape)} voxels of {dtype} from byte {offset}, {offset + stored} bytes)"
        )
    need = count * 4 + (file_size + offset + stored if gz else 0)
    room = available_memory()
    if room is not None and need > room:
        raise SegVolError(
            f"{what} {p}: the header declares {_dims(shape)} voxels of {dtype} ({_size(stored)} stored), which needs "
            f"about {_size(need)} of memory to read; {_size(room)} is available"
        )


# -- geometry ---------------------------------------------------------------------------------
def _finite(*values: Any) -> bool:
    return bool(np.all(np.isfinite(np.asarray(values, dtype=np.float64))))


def _geometry_problem(header: Any) -> str | None:
    pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if not _finite(pixdim):
        return f"its voxel size pixdim[1:4] = {pixdim.tolist()} is not finite"
    sform, qform = int(header["sform_code"]), int(header["qform_code"])
    if sform > 0 and not _finite(header["srow_x"], header["srow_y"], header["srow_z"]):
        return "its sform (srow_x/y/z) holds NaN or infinite values"
    quaternion = [header[k] for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")]
    if qform > 0 and not _finite(*quaternion):
        return "its qform (quatern_b/c/d, qoffset_x/y/z) holds NaN or infinite values"
    try:
        affine = header.get_best_affine()
    except Exception as exc:  # noqa: BLE001 - nibabel raises plain ValueErrors for impossible quaternions
        return f"its qform cannot be decoded ({' '.join(str(exc).split())})"
    problem = affine_problem(affine)
    if problem is None:
        return None
    source = "sform" if sform > 0 else "qform" if qform > 0 else "pixdim"
    return f"{problem.replace('the voxel-to-world affine', f'its voxel-to-world affine (from the {source})')}"


def check_geometry(header: Any, p: Path, what: str) -> None:
    """Refuse a header whose geometry is not finite or is degenerate."""
    with np.errstate(all="ignore"):
        problem = _geometry_problem(header)
    if problem:
        raise SegVolError(f"{what} {p}: {problem}; the header's geometry is broken")


# -- scaling ----------------------------------------------------------------------------------
def check_scaling(header: Any, p: Path, what: str) -> None:
    """``scl_slope``/``scl_inter`` must be usable. A NaN or zero slope means "no
    scaling" (nibabel writes NaN itself); an infinite one is refused, as is a
    non-finite intercept beside a real slope."""
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if math.isinf(slope):
        raise SegVolError(f"{what} {p}: scl_slope is {slope}; the stored values cannot be scaled")
    if slope != 0 and math.isfinite(slope) and not math.isfinite(inter):
        raise SegVolError(f"{what} {p}: scl_inter is {inter} (scl_slope {slope:g}); the stored values cannot be scaled")
