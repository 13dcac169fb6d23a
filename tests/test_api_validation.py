"""The Python API refuses what it cannot honour: every public method, thrown
wrong-typed and wrong-valued arguments, raises SegVolError with one line that
names the argument - never a TypeError, ValueError or AttributeError from the
library's own code, never a silent coercion (a bare string read as one target
per letter, bytes as text, floats truncated to voxels, complex volumes cut to
their real part, a 3x3 matrix taken for an affine)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the tiny artifacts are exported from a torch model

from segvol_rt import ops  # noqa: E402
from segvol_rt.errors import SegVolError  # noqa: E402
from segvol_rt.pipeline import prompts as P  # noqa: E402
from segvol_rt.pipeline import zoom as Z  # noqa: E402
from segvol_rt.runtime import Request, SegVolRuntime  # noqa: E402
from tests.support.tiny_artifacts import tiny_artifacts  # noqa: E402

SCAN = (64, 72, 32)
BOX = (10, 12, 4, 50, 60, 28)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_artifacts(tmp_path_factory.getbasetemp() / "tiny_artifacts")


@pytest.fixture(scope="module")
def scan():
    return (np.random.default_rng(11).random(SCAN) * 1000 - 500).astype(np.float32)


@pytest.fixture(scope="module")
def rt(tiny, scan):
    runtime = SegVolRuntime.load(tiny[0], backend="onnxruntime", device="cpu")
    runtime.set_volume(scan)
    return runtime


def _refused(call, name: str) -> str:
    """Run ``call``; it must raise SegVolError (nothing else) with one line naming ``name``."""
    with pytest.raises(SegVolError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    assert name in message, (name, message)
    return message


def _zeros_with(value, where=(0, 0)):
    a = np.eye(4)
    a[where] = value
    return a


# (id, call(rt, tiny_dir, scan), the argument the message must name)
LOAD_CASES = [
    ("dir-int", lambda rt, d, s: SegVolRuntime.load(123), "artifacts_dir"),
    ("dir-bytes", lambda rt, d, s: SegVolRuntime.load(str(d).encode()), "artifacts_dir"),
    ("dir-none", lambda rt, d, s: SegVolRuntime.load(None), "artifacts_dir"),
    ("dir-empty", lambda rt, d, s: SegVolRuntime.load(""), "artifacts_dir"),
    ("backend-int", lambda rt, d, s: SegVolRuntime.load(d, backend=1), "backend"),
    ("backend-unknown", lambda rt, d, s: SegVolRuntime.load(d, backend="tvm"), "backend"),
    ("backend-none", lambda rt, d, s: SegVolRuntime.load(d, backend=None), "backend"),
    ("backend-list", lambda rt, d, s: SegVolRuntime.load(d, backend=["onnxruntime"]), "backend"),
    ("device-list", lambda rt, d, s: SegVolRuntime.load(d, device=["cpu"]), "device"),
    ("device-unknown", lambda rt, d, s: SegVolRuntime.load(d, device="gpu"), "device"),
    ("verify-str", lambda rt, d, s: SegVolRuntime.load(d, verify="yes"), "verify"),
    ("verify-int", lambda rt, d, s: SegVolRuntime.load(d, verify=1), "verify"),
    ("checkpoint-int", lambda rt, d, s: SegVolRuntime.load(d, checkpoint=3), "checkpoint"),
    ("cache-negative", lambda rt, d, s: SegVolRuntime.load(d, cache_bytes=-1), "cache_bytes"),
    ("cache-float", lambda rt, d, s: SegVolRuntime.load(d, cache_bytes=1.5e6), "cache_bytes"),
    ("cache-bool", lambda rt, d, s: SegVolRuntime.load(d, cache_bytes=True), "cache_bytes"),
    ("cache-str", lambda rt, d, s: SegVolRuntime.load(d, cache_bytes="512MB"), "cache_bytes"),
    ("text-cache-none", lambda rt, d, s: SegVolRuntime.load(d, text_cache_bytes=None), "text_cache_bytes"),
    ("init-cache", lambda rt, d, s: SegVolRuntime(rt.artifacts, rt.backend, cache_bytes=-5), "cache_bytes"),
    ("init-text-cache", lambda rt, d, s: SegVolRuntime(rt.artifacts, rt.backend, text_cache_bytes=2.0), "text_cache_bytes"),
]

VOLUME_CASES = [
    ("none", lambda rt, d, s: rt.set_volume(None), "volume"),
    ("int", lambda rt, d, s: rt.set_volume(123), "volume"),
    ("bytes-path", lambda rt, d, s: rt.set_volume(b"scan.nii.gz"), "volume"),
    ("dict", lambda rt, d, s: rt.set_volume({"data": s}), "volume"),
    ("complex", lambda rt, d, s: rt.set_volume(s.astype(np.complex64)), "complex"),
    ("bool", lambda rt, d, s: rt.set_volume(s > 0), "bool"),
    ("object", lambda rt, d, s: rt.set_volume(s.astype(object)), "volume"),
    ("strings", lambda rt, d, s: rt.set_volume(np.full((4, 4, 4), "a")), "volume"),
    ("datetime", lambda rt, d, s: rt.set_volume(np.zeros((4, 4, 4), "datetime64[s]")), "volume"),
    ("2d", lambda rt, d, s: rt.set_volume(np.zeros((4, 4), np.float32)), "volume"),
    ("ragged", lambda rt, d, s: rt.set_volume([[[1, 2], [3]]]), "volume"),
    ("beyond-float32", lambda rt, d, s: rt.set_volume(s.astype(np.float64) * 1e300), "float32"),
    ("binary-0-1", lambda rt, d, s: rt.set_volume((s > 0).astype(np.uint8)), "binary mask"),
    ("affine-3x3", lambda rt, d, s: rt.set_volume(s, affine=np.eye(3)), "affine"),
    ("affine-str", lambda rt, d, s: rt.set_volume(s, affine="eye"), "affine"),
    ("affine-nan", lambda rt, d, s: rt.set_volume(s, affine=_zeros_with(np.nan)), "affine"),
    ("affine-inf", lambda rt, d, s: rt.set_volume(s, affine=_zeros_with(np.inf, (1, 3))), "affine"),
    ("affine-complex", lambda rt, d, s: rt.set_volume(s, affine=np.eye(4, dtype=complex)), "affine"),
    ("affine-bool", lambda rt, d, s: rt.set_volume(s, affine=np.eye(4, dtype=bool)), "affine"),
    ("affine-ragged", lambda rt, d, s: rt.set_volume(s, affine=[[1, 2], [3]]), "affine"),
    ("affine-with-path", lambda rt, d, s: rt.set_volume("scan.nii.gz", affine=np.eye(4)), "affine"),
    ("reorient-int", lambda rt, d, s: rt.set_volume(s, reorient=1), "reorient"),
    ("reorient-bytes", lambda rt, d, s: rt.set_volume(s, reorient=b"RAS"), "reorient"),
    ("reorient-codes", lambda rt, d, s: rt.set_volume(s, reorient="XYZ"), "reorient"),
]

SEGMENT_CASES = [
    ("text-bytes", lambda rt, d, s: rt.segment(text=b"liver"), "text"),
    ("text-int", lambda rt, d, s: rt.segment(text=5), "text"),
    ("text-list", lambda rt, d, s: rt.segment(text=["liver"]), "text"),
    ("box-float", lambda rt, d, s: rt.segment(box=[10.5, 12, 4, 50, 60, 28]), "box"),
    ("box-float-integral", lambda rt, d, s: rt.segment(box=[10.0, 12, 4, 50, 60, 28]), "box"),
    ("box-float-array", lambda rt, d, s: rt.segment(box=np.array(BOX, np.float32)), "box"),
    ("box-bool", lambda rt, d, s: rt.segment(box=[True, 0, 0, 1, 1, 1]), "box"),
    ("box-int", lambda rt, d, s: rt.segment(box=7), "box"),
    ("box-set", lambda rt, d, s: rt.segment(box=set(BOX)), "box"),
    ("box-bytes", lambda rt, d, s: rt.segment(box=b"10,12,4,50,60,28"), "box"),
    ("box-str-float", lambda rt, d, s: rt.segment(box="10.5,12,4,50,60,28"), "box"),
    ("box-2d-array", lambda rt, d, s: rt.segment(box=np.array(BOX).reshape(2, 3)), "box"),
    ("box-five", lambda rt, d, s: rt.segment(box=BOX[:5]), "box"),
    ("box-str-items", lambda rt, d, s: rt.segment(box=["10", "12", "4", "50", "60", "28"]), "box"),
    ("box-none-items", lambda rt, d, s: rt.segment(box=[None] * 6), "box"),
    ("box-nested", lambda rt, d, s: rt.segment(box=[[10], 12, 4, 50, 60, 28]), "box"),
    ("points-float", lambda rt, d, s: rt.segment(points=[(10.5, 12, 4)]), "point"),
    ("points-float-array", lambda rt, d, s: rt.segment(points=np.array([[10.0, 12.0, 4.0]])), "point"),
    ("points-bool", lambda rt, d, s: rt.segment(points=[(True, 12, 4)]), "point"),
    ("points-none-item", lambda rt, d, s: rt.segment(points=[None]), "point"),
    ("points-none-coordinate", lambda rt, d, s: rt.segment(points=[(None, 12, 4)]), "point"),
    ("points-int", lambda rt, d, s: rt.segment(points=5), "points"),
    ("points-bytes", lambda rt, d, s: rt.segment(points=b"10,12,4"), "points"),
    ("points-dict", lambda rt, d, s: rt.segment(points={"i": 1}), "points"),
    ("points-label", lambda rt, d, s: rt.segment(points=[(10, 12, 4, 2)]), "label"),
    ("points-empty", lambda rt, d, s: rt.segment(points=[]), "points"),
    ("points-object-float", lambda rt, d, s: rt.segment(points=P.Points(np.array([[1.5, 2, 3]]), [1])), "point coordinates"),
    ("points-object-label", lambda rt, d, s: rt.segment(points=P.Points([[1, 2, 3]], [-1])), "labels"),
    ("points-object-shape", lambda rt, d, s: rt.segment(points=P.Points([[1, 2]], [1])), "point coordinates"),
    ("zoom_in-str", lambda rt, d, s: rt.segment(text="liver", zoom_in="yes"), "zoom_in"),
    ("zoom_in-int", lambda rt, d, s: rt.segment(text="liver", zoom_in=1), "zoom_in"),
    ("probabilities-none", lambda rt, d, s: rt.segment(text="liver", probabilities=None), "probabilities"),
    ("keep_logits-int", lambda rt, d, s: rt.segment(text="liver", keep_logits=0), "keep_logits"),
    ("on_device-str", lambda rt, d, s: rt.segment(text="liver", on_device="false"), "on_device"),
    ("seed-negative", lambda rt, d, s: rt.segment(text="liver", seed=-1), "seed"),
    ("seed-float", lambda rt, d, s: rt.segment(text="liver", seed=1.0), "seed"),
    ("seed-bool", lambda rt, d, s: rt.segment(text="liver", seed=True), "seed"),
    ("seed-str", lambda rt, d, s: rt.segment(text="liver", seed="3"), "seed"),
    ("window_prompts-int", lambda rt, d, s: rt.segment(text="liver", window_prompts=1), "window_prompts"),
    ("window_prompts-name", lambda rt, d, s: rt.segment(text="liver", window_prompts="shifted"), "window prompts"),
    ("unknown-option", lambda rt, d, s: rt.segment(text="liver", colour="red"), "colour"),
]

MANY_CASES = [
    ("bare-str", lambda rt, d, s: rt.segment_many("liver"), "targets"),
    ("bare-bytes", lambda rt, d, s: rt.segment_many(b"liver"), "targets"),
    ("mapping", lambda rt, d, s: rt.segment_many({"text": "liver"}), "targets"),
    ("request", lambda rt, d, s: rt.segment_many(Request(text="liver")), "targets"),
    ("int", lambda rt, d, s: rt.segment_many(5), "targets"),
    ("none", lambda rt, d, s: rt.segment_many(None), "targets"),
    ("set", lambda rt, d, s: rt.segment_many({"liver", "kidney"}), "targets"),
    ("item-int", lambda rt, d, s: rt.segment_many([5]), "targets[0]"),
    ("item-none", lambda rt, d, s: rt.segment_many(["liver", None]), "targets[1]"),
    ("item-bytes-text", lambda rt, d, s: rt.segment_many(["liver", {"text": b"x"}]), "targets[1]: text"),
    ("item-unknown-field", lambda rt, d, s: rt.segment_many([{"txt": "liver"}]), "txt"),
    ("item-int-key", lambda rt, d, s: rt.segment_many([{1: "liver", "text": "x"}]), "1"),
    ("item-float-box", lambda rt, d, s: rt.segment_many([{"box": [0.5] * 6}]), "targets[0]: box"),
]

ZOOM_CASES = [
    ("bare-str", lambda rt, d, s: rt.segment_zoom_space("liver"), "targets"),
    ("item-int", lambda rt, d, s: rt.segment_zoom_space([5]), "targets[0]"),
    ("item-request", lambda rt, d, s: rt.segment_zoom_space([Request(text="liver")]), "targets[0]"),
    ("box-float", lambda rt, d, s: rt.segment_zoom_space([Z.Target(box_zoom=(1.5, 0, 0, 2, 2, 2))]), "box_zoom"),
    ("box-five", lambda rt, d, s: rt.segment_zoom_space([Z.Target(box_zoom=(0, 0, 0, 1, 1))]), "box_zoom"),
    ("box-outside", lambda rt, d, s: rt.segment_zoom_space([Z.Target(box_zoom=(0, 0, 0, 999, 1, 1))]), "zoom-out box"),
    ("box-str", lambda rt, d, s: rt.segment_zoom_space([Z.Target(box_zoom="0,0,0,1,1,1")]), "box_zoom"),
    ("points-tuples", lambda rt, d, s: rt.segment_zoom_space([Z.Target(points_zoom=[(1, 2, 3)])]), "points_zoom"),
    ("points-label", lambda rt, d, s: rt.segment_zoom_space([Z.Target(points_zoom=P.Points([[1, 2, 3]], [2]))]), "labels"),
    ("points-outside", lambda rt, d, s: rt.segment_zoom_space([Z.Target(points_zoom=P.Points([[1, 2, 999]], [1]))]), "outside"),
    ("points-many", lambda rt, d, s: rt.segment_zoom_space([Z.Target(points_zoom=P.Points([[1, 1, 1]] * 99, [1] * 99))]), "points"),
    ("text-short", lambda rt, d, s: rt.segment_zoom_space([Z.Target(text_embedding=np.zeros(5, np.float32))]), "text_embedding"),
    ("text-str", lambda rt, d, s: rt.segment_zoom_space([Z.Target(text_embedding="liver")]), "text_embedding"),
    ("text-nan", lambda rt, d, s: rt.segment_zoom_space([Z.Target(text_embedding=np.full(32, np.nan, np.float32))]), "text_embedding"),
    ("seed-negative", lambda rt, d, s: rt.segment_zoom_space([Z.Target(box_zoom=(0, 0, 0, 1, 1, 1), seed=-1)]), "seed"),
    ("seed-option", lambda rt, d, s: rt.segment_zoom_space([Z.Target(box_zoom=(0, 0, 0, 1, 1, 1))], seed=3), "seed"),
    ("zoom_in-option", lambda rt, d, s: rt.segment_zoom_space([Z.Target(box_zoom=(0, 0, 0, 1, 1, 1))], zoom_in="no"), "zoom_in"),
    ("option-without-targets", lambda rt, d, s: rt.segment_zoom_space([], probabilities=1), "probabilities"),
]

TEXT_CASES = [
    ("bare-str", lambda rt, d, s: rt.text_embeddings("liver"), "texts"),
    ("bare-bytes", lambda rt, d, s: rt.text_embeddings(b"liver"), "texts"),
    ("none", lambda rt, d, s: rt.text_embeddings(None), "texts"),
    ("item-bytes", lambda rt, d, s: rt.text_embeddings([b"liver"]), "texts[0]"),
    ("item-int", lambda rt, d, s: rt.text_embeddings(["liver", 1]), "texts[1]"),
    ("item-empty", lambda rt, d, s: rt.text_embeddings(["  "]), "texts[0]"),
]

REQUEST_CASES = [
    ("text-bytes", lambda rt, d, s: Request(text=b"liver"), "text"),
    ("box-float", lambda rt, d, s: Request(box=[0.5] * 6), "box"),
    ("box-empty", lambda rt, d, s: Request(box="5,5,5,4,10,10"), "box"),
    ("points-short", lambda rt, d, s: Request(points="1,2"), "point"),
    ("seed", lambda rt, d, s: Request(seed=-2), "seed"),
    ("zoom_in", lambda rt, d, s: Request(zoom_in=None), "zoom_in"),
    ("window_prompts", lambda rt, d, s: Request(window_prompts=None), "window_prompts"),
    ("of-int", lambda rt, d, s: Request.of(5), "target"),
    ("of-bytes", lambda rt, d, s: Request.of(b"liver"), "bytes"),
    ("of-none", lambda rt, d, s: Request.of(None), "target"),
    ("of-list", lambda rt, d, s: Request.of(["liver"]), "target"),
    ("of-unknown", lambda rt, d, s: Request.of({"nope": 1}), "nope"),
    ("of-int-key", lambda rt, d, s: Request.of({1: 2}), "1"),
    ("of-bad-value", lambda rt, d, s: Request.of({"text": "liver", "seed": 0.5}), "seed"),
]

CASES = [
    pytest.param(call, name, id=f"{group}-{case}")
    for group, cases in [("load", LOAD_CASES), ("set_volume", VOLUME_CASES), ("segment", SEGMENT_CASES),
                         ("segment_many", MANY_CASES), ("segment_zoom_space", ZOOM_CASES),
                         ("text_embeddings", TEXT_CASES), ("Request", REQUEST_CASES)]
    for case, call, name in cases
]


@pytest.mark.parametrize("call, name", CASES)
def test_wrong_arguments_are_one_line_errors_naming_the_argument(rt, tiny, scan, call, name):
    _refused(lambda: call(rt, tiny[0], scan), name)


# Values of the wrong type for nearly every argument (a few are right for some).
ODD = [None, b"x", 1.5, True, -1, 1j, object(), [], {}, "x", [None] * 6, np.float64(2.0), np.array([1.5]), np.bool_(False)]

SWEEP = {
    "load": (lambda rt, d, s, **kw: SegVolRuntime.load(**{"artifacts_dir": d, **kw}),
             ["artifacts_dir", "backend", "device", "verify", "checkpoint", "cache_bytes", "text_cache_bytes"]),
    "set_volume": (lambda rt, d, s, **kw: rt.set_volume(**{"volume": s, **kw}), ["volume", "affine", "reorient"]),
    "segment": (lambda rt, d, s, **kw: rt.segment(**{"box": BOX, **kw}),
                ["text", "box", "points", "zoom_in", "probabilities", "seed", "keep_logits", "on_device", "window_prompts"]),
    "segment_many": (lambda rt, d, s, **kw: rt.segment_many(**kw), ["targets"]),
    "segment_many-item": (lambda rt, d, s, targets: rt.segment_many([targets]), ["targets"]),
    "segment_zoom_space": (lambda rt, d, s, **kw: rt.segment_zoom_space(**kw), ["targets"]),
    "text_embeddings": (lambda rt, d, s, **kw: rt.text_embeddings(**kw), ["texts"]),
    "Request": (lambda rt, d, s, **kw: Request(**kw),
                ["text", "box", "points", "zoom_in", "probabilities", "seed", "keep_logits", "on_device", "window_prompts"]),
    "Request.of": (lambda rt, d, s, item: Request.of(item), ["item"]),
}


@pytest.mark.parametrize("method", list(SWEEP))
def test_odd_values_for_every_argument_never_escape_as_other_errors(tiny, scan, method):
    """Whatever is passed, the library answers with a result or a SegVolError:
    never a TypeError, ValueError or AttributeError from its own code."""
    rt = SegVolRuntime.load(tiny[0], backend="onnxruntime", device="cpu")
    rt.set_volume(scan)
    call, arguments = SWEEP[method]
    for argument in arguments:
        for value in ODD:
            try:
                call(rt, tiny[0], scan, **{argument: value})
            except SegVolError as exc:
                assert "\n" not in str(exc), (argument, value, str(exc))
            except Exception as exc:  # any other type is the failure this test looks for
                pytest.fail(f"{method}({argument}={value!r}) raised {type(exc).__name__}: {exc}")


def test_a_refused_volume_keeps_the_previous_one(rt, scan):
    before = rt.geometry
    _refused(lambda: rt.set_volume(scan.astype(np.complex64)), "complex")
    _refused(lambda: rt.set_volume(scan, affine=np.eye(3)), "affine")
    assert rt.geometry is before


def test_release_volume_takes_nothing_and_may_repeat(tiny, scan):
    """release_volume has no argument to get wrong (a wrong arity is Python's own
    TypeError, before any library code); it is safe without a volume and twice."""
    rt = SegVolRuntime.load(tiny[0], backend="onnxruntime", device="cpu")
    rt.release_volume()
    rt.set_volume(scan)
    rt.release_volume()
    rt.release_volume()
    _refused(lambda: rt.segment(text="liver"), "set_volume")


def test_missing_artifacts_dir_is_a_user_error(tmp_path):
    _refused(lambda: SegVolRuntime.load(tmp_path / "nothing"), "nothing")


# -- what is accepted -------------------------------------------------------------


def test_numpy_integers_and_flags_are_accepted_as_python_ones(rt):
    plain = rt.segment(text="liver", box=list(BOX), points=[(30, 36, 16)], zoom_in=False, seed=2)
    numpy = rt.segment(
        text=np.str_("liver"),
        box=np.array(BOX, np.int32),
        points=np.array([[30, 36, 16, 1]], np.uint16),
        zoom_in=np.bool_(False),
        seed=np.int64(2),
    )
    np.testing.assert_array_equal(plain.mask, numpy.mask)
    req = Request(box=tuple(np.int16(v) for v in BOX), zoom_in=np.bool_(True), seed=np.uint8(3))
    assert type(req.zoom_in) is bool and type(req.seed) is int and req.seed == 3


def test_string_prompts_still_parse(rt):
    by_str = rt.segment(box=",".join(map(str, BOX)), points="30,36,16;20,20,10,0", zoom_in=False)
    by_ints = rt.segment(box=BOX, points=[(30, 36, 16), (20, 20, 10, 0)], zoom_in=False)
    np.testing.assert_array_equal(by_str.mask, by_ints.mask)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.float16, np.float64])
def test_real_volume_dtypes_read_as_float32(tiny, scan, dtype):
    rt = SegVolRuntime.load(tiny[0], backend="onnxruntime", device="cpu")
    data = (scan + (600 if np.dtype(dtype).kind == "u" else 0)).astype(dtype)
    rt.set_volume(data, affine=np.eye(4, dtype=np.int64))
    reference = SegVolRuntime.load(tiny[0], backend="onnxruntime", device="cpu")
    reference.set_volume(data.astype(np.float32))
    np.testing.assert_array_equal(rt.crop_image, reference.crop_image)


def test_a_path_like_volume_and_artifacts_dir(tiny, tmp_path, scan):
    nib = pytest.importorskip("nibabel")
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(scan, np.eye(4)), str(path))
    rt = SegVolRuntime.load(Path(tiny[0]), backend="onnxruntime", device="cpu", cache_bytes=0, text_cache_bytes=0)
    rt.set_volume(path)
    assert rt.segment(text="liver", zoom_in=False).mask.shape == SCAN


# -- probabilities without NumPy warnings ---------------------------------------------


def test_sigmoid_of_large_negative_logits_warns_nothing_and_is_unchanged():
    logits = np.array([-1e30, -1e4, -104.0, -88.8, -88.7, -20.0, 0.0, 3e-8, 20.0, 1e4], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ops.sigmoid(logits)
    with np.errstate(over="ignore"):
        expected = np.reciprocal(np.float32(1) + np.exp(-logits))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)  # bit for bit
    assert got[0] == 0.0 and got[-1] == 1.0
