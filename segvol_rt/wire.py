"""The wire format between :mod:`segvol_rt.client` and :mod:`segvol_rt.serve`:
model and tensor names, the session header, the wire version, and how
volumes, prompts and results travel, both directions. One definition for both
sides, which import it and not each other; numpy only (the server runs on
numpy 1.x, the client on numpy 2, and the bytes are the same).

Version: every ``meta`` a client sends carries ``wire`` (:data:`WIRE_VERSION`)
and every ``info`` of ``segvol_open`` answers with the server's. A server
refuses another version with the error code ``version`` (one line naming both
versions) and a client refuses a server that answers another or none
(:func:`check_server_version`), so a mismatch is one clear
:class:`SegVolError` line on the client, never an HTTP error from deep inside.

Models (Triton, ``batching=False``; every tensor has shape ``[1]`` unless noted):

* ``segvol_open``: ``session`` (BYTES, the client-chosen id), ``meta`` (BYTES,
  JSON: dtype, shape, affine, total compressed bytes, memory order, chunk
  index; or a server-side ``path``), ``chunk`` (BYTES: a slice of the zlib
  stream of the volume's raw ``(I, J, K)`` bytes in its own dtype and order). A volume goes
  in chunks of at most :data:`CHUNK_BYTES`; the last chunk completes the
  session. Out: ``info`` (BYTES, JSON: state, received bytes, scan shape).
* ``segvol_segment``: ``session``, ``request`` (BYTES, JSON of the
  :class:`segvol_rt.types.Request` fields of :data:`SERVED_FIELDS`:
  :func:`encode_request` / :func:`decode_request`). Out: ``mask`` (BYTES: zlib of
  ``np.packbits`` of the mask's bounding-box crop, C order), ``box`` (INT64
  ``[6]``: ``i0, j0, k0, i1, j1, k1`` half-open in scan voxels; an empty
  mask has ``i1 == i0``), ``info`` (JSON: shape, timings, roi, n_windows,
  zoom_in_applied, no_foreground, prompt, and ``ran``: the server's
  monotonic seconds at the start and end of the runtime call;
  :func:`encode_result` / :func:`decode_result`).
* ``segvol_close``: ``session``. Out: ``info``.

Errors: a user error is a Triton error whose text ends in
``segvol_rt.error[CODE]: MESSAGE`` (CODE ``session`` for an unknown or
expired session, ``version`` for a client of another wire version,
``request`` otherwise); an error of the server itself is
``segvol_rt.error[internal]: ...`` naming an id that its log carries with the
details (no traceback crosses the wire); :func:`parse_error` reads them back.
The tag's format is the one thing every wire version keeps, so even a
mismatched client reads it.

Bounds: every size computed from a peer's numbers is checked before use
(:func:`checked_shape`: exact integers, at most :data:`MAX_WIRE_VOXELS`), and
every zlib stream inflates through :func:`inflate_bounded` into exactly the
bytes its header announces, never more.
"""

from __future__ import annotations

import json
import math
import re
import sys
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from segvol_rt import validate as V
from segvol_rt.errors import SegVolError
from segvol_rt.types import Points, Request, Roi, Segmentation

if TYPE_CHECKING:
    from segvol_rt.pipeline.geometry import Geometry

# Bumped whenever a model, tensor, field or encoding changes meaning.
WIRE_VERSION = 1

OPEN_MODEL = "segvol_open"
SEGMENT_MODEL = "segvol_segment"
CLOSE_MODEL = "segvol_close"
MODELS = (OPEN_MODEL, SEGMENT_MODEL, CLOSE_MODEL)

# HTTP header that carries the session id on every request: the router
# (nginx ``hash $http_x_segvol_session consistent``) keeps a session on one server.
SESSION_HEADER = "X-SegVol-Session"
# Header that carries the API key (checked by Triton itself, --http-restricted-api).
API_KEY_HEADER = "X-SegVol-Key"

# A chunk of the compressed volume per request: well under the 64 MiB HTTP
# input limit of newer Triton releases (PyTriton 0.7.0's tritonserver 2.51.0
# has none) and under the nginx template's in-memory body bound (24 MiB).
CHUNK_BYTES = 16 * 2**20
# dtypes a volume may travel in (the scan's own; float32 for real-valued data)
VOLUME_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "float32", "float64")
_SESSION_ID = re.compile(r"^[0-9a-f]{32}$")

ERROR_TAG = "segvol_rt.error"
ERROR_CODES = ("session", "request", "version", "internal")

# Request fields a served segment takes (the prompts, then the options); the
# others (probabilities, logits, device arrays) would be volumes of floats on the wire.
SERVED_FIELDS = ("text", "box", "points", "zoom_in", "seed", "window_prompts")
SERVED_OPTIONS = SERVED_FIELDS[3:]
_ERROR_LINE = re.compile(rf"{re.escape(ERROR_TAG)}\[(\w+)\]: ([^\n]*)")  # Triton appends lines of its own

# The largest volume the wire describes (1 Ti voxels, far beyond any scan):
# every byte count derived from a shape then fits int64 and a Py_ssize_t.
MAX_WIRE_VOXELS = 2**40
# An API key travels in an HTTP header: printable ASCII (no CR/LF), bounded.
API_KEY_CHARS = (16, 1024)
# Output bytes one inflate step may produce (memory beyond the result: one step).
INFLATE_STEP = 4 * 2**20


def check_session_id(value: str) -> str:
    """A session id is 32 lowercase hex digits (a uuid4 hex the client draws)."""
    if not isinstance(value, str) or not _SESSION_ID.match(value):
        raise SegVolError(f"session id must be 32 lowercase hex digits, not {str(value)[:40]!r}")
    return value


def check_api_key(key: str, what: str = "the API key") -> str:
    """An API key: :data:`API_KEY_CHARS` printable ASCII characters (it is sent
    as an HTTP header; a CR or LF would end the header, a huge one is refused
    by the HTTP stack in its own words)."""
    lo, hi = API_KEY_CHARS
    if not isinstance(key, str) or not lo <= len(key) <= hi or not key.isascii() or not key.isprintable():
        raise SegVolError(f"{what} must be {lo} to {hi} printable ASCII characters")
    return key


def checked_shape(value: Any, what: str) -> tuple[int, int, int]:
    """A volume shape ``(I, J, K)`` from a peer: three positive integers whose
    exact product (Python integers: nothing wraps) is at most
    :data:`MAX_WIRE_VOXELS`. Anything else is a SegVolError naming ``what``."""
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(type(s) is int and s > 0 for s in value)):
        raise SegVolError(f"{what} must be 3 positive integers (I, J, K)")
    if math.prod(value) > MAX_WIRE_VOXELS:
        raise SegVolError(f"{what} has more than {MAX_WIRE_VOXELS} voxels")
    return (value[0], value[1], value[2])


def inflate_bounded(chunks: Iterable[bytes], size: int, what: str) -> bytearray:
    """The exactly ``size`` bytes that the zlib stream in ``chunks`` (its pieces,
    in order) inflates to. Streamed into one buffer of ``size`` bytes, at most
    :data:`INFLATE_STEP` bytes a step, so memory never exceeds the announced
    size however the stream is made (a zip bomb stops one byte past it). A
    stream that is not zlib, inflates to more or fewer bytes, or carries data
    after its end is a SegVolError naming ``what``."""
    if type(size) is not int or not 0 <= size <= sys.maxsize:
        raise SegVolError(f"{what}: {size!r} bytes is not a size this server can hold")
    out = bytearray(size)
    filled, inflater = 0, zlib.decompressobj()
    try:
        for chunk in chunks:
            pending = bytes(chunk)
            while pending:
                if inflater.eof:
                    raise SegVolError(f"{what} carries data after the end of its zlib stream")
                # max_length 0 would mean "unbounded": one byte past the end at least, to see an overlong stream
                piece = inflater.decompress(pending, max(1, min(size - filled, INFLATE_STEP)))
                if filled + len(piece) > size:
                    raise SegVolError(f"{what} inflates to more than the {size} bytes its header announces")
                out[filled : filled + len(piece)] = piece
                filled += len(piece)
                pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise SegVolError(f"{what} is not a valid zlib stream ({exc})") from None
    if filled != size or not inflater.eof or inflater.unused_data:
        raise SegVolError(f"{what} inflates to {filled} bytes, not the {size} its header announces")
    return out


def error_text(code: str, message: str) -> str:
    """The one line a served user error carries."""
    return f"{ERROR_TAG}[{code}]: {' '.join(message.split())}"


def parse_error(text: str) -> tuple[str, str] | None:
    """(code, message) of a served user error, or None for any other Triton error."""
    found = _ERROR_LINE.search(text or "")
    if found is None:
        return None
    return found.group(1), " ".join(found.group(2).split())


# -- version handshake -------------------------------------------------------------
class VersionMismatch(SegVolError):
    """The two sides speak different wire versions (served with the code ``version``)."""


def _versions(theirs: Any, who: str) -> str:
    said = "none (a segvol-rt from before wire versions)" if theirs is None else str(theirs)[:20]
    return f"the {who} speaks wire version {said}, this {'server' if who == 'client' else 'client'} {WIRE_VERSION}"


def check_client_version(meta: Mapping[str, Any]) -> None:
    """The server's check of a ``meta`` document: its ``wire`` is :data:`WIRE_VERSION`,
    else a SegVolError (served with the code ``version``)."""
    theirs = meta.get("wire")
    if theirs != WIRE_VERSION:
        raise VersionMismatch(f"{_versions(theirs, 'client')}: use the same segvol-rt version on both sides")


def check_server_version(info: Mapping[str, Any], url: str) -> None:
    """The client's check of an ``info`` answer of ``segvol_open``: the server speaks
    :data:`WIRE_VERSION`, else a SegVolError naming both versions and the server."""
    theirs = info.get("wire")
    if theirs != WIRE_VERSION:
        raise VersionMismatch(f"segvol-rt server at {url}: {_versions(theirs, 'server')}; "
                          "use the same segvol-rt version on both sides")


# -- JSON in BYTES tensors ----------------------------------------------------------
def to_json_bytes(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def from_json_bytes(raw: bytes, what: str) -> dict[str, Any]:
    """A JSON object from a BYTES tensor element; a malformed one is a SegVolError."""
    try:
        doc = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SegVolError(f"{what} is not valid JSON ({exc.__class__.__name__})") from None
    except RecursionError:  # the C decoder stops at the interpreter's recursion limit
        raise SegVolError(f"{what} is nested too deeply to be a request") from None
    if not isinstance(doc, dict):
        raise SegVolError(f"{what} must be a JSON object, not {type(doc).__name__}")
    return doc


# -- volumes ------------------------------------------------------------------------
@dataclass(frozen=True)
class VolumeHeader:
    """What ``meta`` says of an uploaded volume: dtype, shape ``(I, J, K)``,
    4x4 affine, the compressed stream's total size in bytes, and the memory
    ``order`` of the bytes ("F" for a Fortran-ordered array as nibabel reads
    it, else "C"). The order is kept because the runtime's float32
    preprocessing sums in memory order: the same values in another layout can
    move a mask by a voxel, and a served mask must equal the local one."""

    dtype: str
    shape: tuple[int, int, int]
    affine: tuple[tuple[float, ...], ...]
    compressed_bytes: int
    order: str = "C"

    @property
    def voxels(self) -> int:
        """I*J*K, exact (a Python integer: never wraps)."""
        return math.prod(self.shape)

    @property
    def raw_bytes(self) -> int:
        return self.voxels * np.dtype(self.dtype).itemsize

    def as_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "affine": [list(r) for r in self.affine],
                "compressed_bytes": self.compressed_bytes, "order": self.order}

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> VolumeHeader:
        """Checked fields of ``meta`` (a SegVolError names the bad one)."""
        dtype = doc.get("dtype")
        if dtype not in VOLUME_DTYPES:
            raise SegVolError(f"meta.dtype must be one of {', '.join(VOLUME_DTYPES)}, not {str(dtype)[:20]!r}")
        shape = checked_shape(doc.get("shape"), "meta.shape")
        arr = V.affine(doc.get("affine"), "meta.affine")  # the runtime's own check of an affine
        size = doc.get("compressed_bytes")
        if type(size) is not int or size <= 0:
            raise SegVolError("meta.compressed_bytes must be a positive integer")
        order = doc.get("order", "C")
        if order not in ("C", "F"):
            raise SegVolError("meta.order must be 'C' or 'F'")
        return cls(dtype, shape, tuple(tuple(float(v) for v in row) for row in arr), size, order)


def wire_volume(volume: np.ndarray) -> np.ndarray:
    """The array that travels: the scan's own dtype when it is one of
    :data:`VOLUME_DTYPES` (native byte order), else float32 - the runtime
    reads every real dtype as float32, so no value changes."""
    arr = np.asarray(volume)
    if arr.ndim != 3:
        raise SegVolError(f"volume must be a 3D (I, J, K) array, not {arr.ndim}D")
    if arr.dtype.kind not in "iuf":
        raise SegVolError(f"volume must hold real numbers (integer or float), not {arr.dtype}")
    name = arr.dtype.newbyteorder("=").name
    return arr.astype(name if name in VOLUME_DTYPES else "float32", copy=False)


def memory_order(volume: np.ndarray) -> Literal["C", "F"]:
    """"F" for a Fortran-ordered (not also C-ordered) array, else "C"."""
    return "F" if volume.flags.f_contiguous and not volume.flags.c_contiguous else "C"


def compress_volume(volume: np.ndarray, level: int = 1) -> bytes:
    """zlib stream of ``volume``'s bytes in :func:`memory_order` (level 1: CT
    compresses about 2-3x at a few hundred MB/s; higher levels gain little)."""
    from isal import isal_zlib  # a base dependency; zlib-compatible, several times faster

    return isal_zlib.compress(volume.tobytes(order=memory_order(volume)), level)


def decompress_volume(stream: bytes | Iterable[bytes], header: VolumeHeader) -> np.ndarray:
    """The ``(I, J, K)`` array of an uploaded stream (bytes, or its chunks in
    order); never more than the header's raw size is inflated (:func:`inflate_bounded`)."""
    chunks: Iterable[bytes] = [stream] if isinstance(stream, bytes) else stream
    what = f"the uploaded volume ({'x'.join(map(str, header.shape))} {header.dtype})"
    raw = inflate_bounded(chunks, header.raw_bytes, what)
    return np.frombuffer(raw, dtype=header.dtype).reshape(header.shape, order=header.order)  # type: ignore[call-overload]


# -- requests -----------------------------------------------------------------------
def encode_geometry(geometry: Geometry, spatial_size: Sequence[int]) -> dict[str, Any]:
    """What a client needs to rebuild a session's coordinate chain: the
    model-space crop box (inclusive), the model's window and the
    reorientation the server applied (None: the stored voxel order)."""
    d, h, w = geometry.crop.out_shape
    crop_box = geometry.box((0, 0, 0, d - 1, h - 1, w - 1), "crop", "model")
    reo = geometry.reorient
    return {"crop_box": list(crop_box or ()), "spatial_size": [int(s) for s in spatial_size],
            "reorient": None if reo is None else {"ornt": [list(p) for p in reo.ornt], "codes": reo.codes}}


def decode_geometry(doc: Any, shape: tuple[int, int, int]) -> Geometry:
    """The :class:`~segvol_rt.pipeline.geometry.Geometry` of :func:`encode_geometry`'s
    document for a scan of ``shape``; a malformed one is a SegVolError."""
    from segvol_rt.pipeline.geometry import Geometry, Reorient

    if not isinstance(doc, Mapping):
        raise SegVolError("the server's geometry must be a JSON object")
    box, size, reo = doc.get("crop_box"), doc.get("spatial_size"), doc.get("reorient")
    if not (isinstance(box, list) and len(box) == 6 and all(type(v) is int for v in box)):
        raise SegVolError("the server's geometry.crop_box must be 6 integers")
    spatial = checked_shape(size, "the server's geometry.spatial_size")
    reorient = None
    if reo is not None:
        ornt = reo.get("ornt") if isinstance(reo, Mapping) else None
        codes = reo.get("codes") if isinstance(reo, Mapping) else None
        if not (isinstance(ornt, list) and sorted(a for a, _ in _pairs(ornt)) == [0, 1, 2] and isinstance(codes, str)):
            raise SegVolError("the server's geometry.reorient must name a permutation of the 3 axes, flips and codes")
        reorient = Reorient(shape, tuple(_pairs(ornt)), codes)  # type: ignore[arg-type]
    return Geometry.build(shape, tuple(box), spatial, reorient)


def _pairs(ornt: list[Any]) -> list[tuple[int, int]]:
    """``[[axis, flip], ...]`` as integer pairs (flip +1 or -1), else []."""
    ok = len(ornt) == 3 and all(isinstance(p, list) and len(p) == 2 and type(p[0]) is int and p[1] in (1, -1)
                                and type(p[1]) is int for p in ornt)
    return [(p[0], p[1]) for p in ornt] if ok else []


def _plain(value: Any) -> Any:
    """Tuples, numpy integers and numpy bools as JSON lists, ints and bools, :class:`Points` as
    ``[[i, j, k, label], ...]`` (strings as they are)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Points):  # the local API's typed points travel as (i, j, k, label) rows
        return [[*_plain(c), _plain(label)] for c, label in zip(value.coords, value.labels)]
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    return value


def encode_request(text: str | None, box: Any, points: Any, options: Mapping[str, Any]) -> bytes:
    """The ``request`` tensor of a segment: prompts in scan voxel indices ``(i, j, k)``
    and the options of :data:`SERVED_OPTIONS`, checked here as the local API
    checks them (:class:`segvol_rt.types.Request`)."""
    unsupported = sorted(k for k in options if k not in SERVED_OPTIONS)
    if unsupported:
        raise SegVolError(f"{', '.join(unsupported)}: not served (the server returns masks); served options: "
                          f"{', '.join(SERVED_OPTIONS)}")
    Request.of({"text": text, "box": box, "points": points, **options})  # the same type checks as the local API
    fields = {"text": text, "box": _plain(box), "points": _plain(points), **{k: _plain(v) for k, v in options.items()}}
    return to_json_bytes({k: v for k, v in fields.items() if v is not None})


def decode_request(raw: bytes) -> dict[str, Any]:
    """The fields of a ``request`` tensor (keyword arguments of
    :meth:`segvol_rt.runtime.SegVolRuntime.segment`); an unknown field is a SegVolError."""
    fields = from_json_bytes(raw, "request")
    unknown = sorted(k for k in fields if k not in SERVED_FIELDS)
    if unknown:
        raise SegVolError(f"request fields {', '.join(map(repr, unknown))} are not served; fields: {', '.join(SERVED_FIELDS)}")
    return fields


# -- results --------------------------------------------------------------------------
def encode_result(seg: Segmentation, shape: tuple[int, ...], ran: tuple[float, float]) -> tuple[bytes, np.ndarray, bytes]:
    """``(mask, box, info)`` of a segment's answer: the mask as :func:`encode_mask`
    packs it, and the JSON info (``shape`` the scan's ``(I, J, K)``, ``ran`` the
    server's monotonic seconds around the runtime call)."""
    stream, box = encode_mask(seg.mask)
    roi = seg.roi
    info = {
        "ran": list(ran),
        "shape": list(shape),
        "timings": seg.timings,
        "roi": None if roi is None else {"official": list(roi.official), "lo": list(roi.lo), "hi": list(roi.hi)},
        "n_windows": seg.n_windows,
        "zoom_in_applied": seg.zoom_in_applied,
        "no_foreground": seg.no_foreground,
        "prompt": seg.prompt,
    }
    return stream, box, to_json_bytes(info)


def decode_result(stream: bytes, box: np.ndarray, info: Mapping[str, Any]) -> Segmentation:
    """The :class:`segvol_rt.types.Segmentation` of :func:`encode_result`'s output
    (``info`` already parsed): the uint8 ``(I, J, K)`` mask in scan space and the
    zoom-in record; no probabilities or logits travel."""
    mask = decode_mask(stream, np.asarray(box).reshape(-1), tuple(info["shape"]))
    roi = info["roi"]
    return Segmentation(
        mask=mask,
        roi=None if roi is None else Roi(tuple(roi["official"]), tuple(roi["lo"]), tuple(roi["hi"])),
        n_windows=int(info["n_windows"]),
        zoom_in_applied=bool(info["zoom_in_applied"]),
        no_foreground=bool(info["no_foreground"]),
        timings={k: float(v) for k, v in info["timings"].items()},
        prompt=str(info["prompt"]),
    )


# -- masks --------------------------------------------------------------------------
def encode_mask(mask: np.ndarray) -> tuple[bytes, np.ndarray]:
    """(zlib of the packed bits of the bounding-box crop, box ``[6]`` int64 half-open)
    of a 0/1 ``(I, J, K)`` mask."""
    binary = np.asarray(mask) > 0
    nz = [np.flatnonzero(binary.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    if any(n.size == 0 for n in nz):
        return zlib.compress(b"", 1), np.zeros(6, np.int64)
    lo = [int(n[0]) for n in nz]
    hi = [int(n[-1]) + 1 for n in nz]
    crop = binary[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    return zlib.compress(np.packbits(crop, axis=None).tobytes(), 1), np.array(lo + hi, np.int64)


def decode_mask(stream: bytes, box: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The uint8 ``(I, J, K)`` mask of :func:`encode_mask`'s output (the box is
    checked against ``shape``, the stream inflated to the box's bits at most)."""
    shape = checked_shape(list(shape), "the mask's shape")
    lo, hi = [int(v) for v in box[:3]], [int(v) for v in box[3:]]
    if len(lo) != 3 or len(hi) != 3 or not all(0 <= l <= h <= n for l, h, n in zip(lo, hi, shape)):
        raise SegVolError(f"the mask's box {lo + hi} does not lie in the scan's {shape}")
    mask = np.zeros(shape, np.uint8)
    size = math.prod(h - l for l, h in zip(lo, hi))
    if size > 0:
        bits = np.frombuffer(inflate_bounded([stream], -(-size // 8), "the mask"), np.uint8)
        crop = np.unpackbits(bits, count=size).reshape([h - l for l, h in zip(lo, hi)])
        mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = crop
    return mask


_NARROW = ("uint8", "int8", "int16", "uint16", "int32")


def narrow_integers(volume: np.ndarray) -> np.ndarray:
    """A float volume whose values are all integers as the smallest integer
    dtype that holds them exactly (a CT read as float32 goes back to int16:
    half the bytes, and the server's float32 is the same); others unchanged."""
    arr = np.asarray(volume)
    if arr.dtype.kind != "f" or arr.size == 0:
        return arr
    lo, hi = float(arr.min()), float(arr.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return arr
    for name in _NARROW:
        info = np.iinfo(name)
        if info.min <= lo and hi <= info.max:
            narrow = arr.astype(name)
            return narrow if np.array_equal(narrow, arr) else arr
    return arr
