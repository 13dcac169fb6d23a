"""The wire module both serve and client speak: the version handshake's client
side and the request and result codecs, without a server (tests/serve/ runs one)."""

from __future__ import annotations

import numpy as np
import pytest

from segvol_rt import wire as W
from segvol_rt.errors import SegVolError


# -- wire version handshake ---------------------------------------------------------
def test_the_client_refuses_a_server_of_another_wire_version() -> None:
    W.check_server_version({"state": "ready", "wire": W.WIRE_VERSION}, "http://127.0.0.1:1")
    for info in ({"state": "ready"}, {"state": "ready", "wire": W.WIRE_VERSION + 1}):
        with pytest.raises(W.VersionMismatch, match=r"^segvol-rt server at http://127.0.0.1:1: the server speaks wire version"):
            W.check_server_version(info, "http://127.0.0.1:1")


# -- requests and results both ways --------------------------------------------------
def test_a_request_travels_as_the_local_api_checks_it() -> None:
    raw = W.encode_request("liver", (1, 2, 3, 4, 5, 6), np.array([[1, 2, 3, 0]]), {"zoom_in": False, "seed": np.int64(3)})
    assert W.decode_request(raw) == {"text": "liver", "box": [1, 2, 3, 4, 5, 6], "points": [[1, 2, 3, 0]], "zoom_in": False,
                                     "seed": 3}
    with pytest.raises(SegVolError, match="probabilities: not served"):
        W.encode_request("liver", None, None, {"probabilities": True})
    with pytest.raises(SegVolError, match="box"):
        W.encode_request("liver", (1.5, 2, 3, 4, 5, 6), None, {})
    with pytest.raises(SegVolError, match="'keep_logits' are not served"):
        W.decode_request(b'{"text": "liver", "keep_logits": true}')
    assert tuple(f for f in W.SERVED_FIELDS if f not in ("text", "box", "points")) == W.SERVED_OPTIONS


def test_a_result_travels_back_whole() -> None:
    from segvol_rt.types import Roi, Segmentation

    mask = np.zeros((5, 6, 7), np.uint8)
    mask[1:3, 2:5, 3:4] = 1
    seg = Segmentation(mask=mask, roi=Roi((0, 1, 2, 3, 4, 5), (0, 1, 2), (4, 5, 6)), n_windows=2, zoom_in_applied=True,
                       timings={"encode": 0.5}, prompt="text='liver'")
    stream, box, info = W.encode_result(seg, mask.shape, (1.0, 2.0))
    back = W.decode_result(stream, box, W.from_json_bytes(info, "info"))
    assert np.array_equal(back.mask, mask) and back.mask.dtype == np.uint8
    assert (back.roi, back.n_windows, back.zoom_in_applied, back.no_foreground, back.timings, back.prompt) == (
        seg.roi, 2, True, False, {"encode": 0.5}, "text='liver'")
    assert W.from_json_bytes(info, "info")["ran"] == [1.0, 2.0]


# -- a session's geometry ------------------------------------------------------------
@pytest.mark.parametrize("reoriented", [False, True])
def test_a_sessions_geometry_travels_with_its_reorientation(reoriented: bool) -> None:
    from segvol_rt.pipeline.geometry import Geometry, Reorient

    shape = (20, 24, 12)
    reorient = Reorient(shape, ((1, -1), (0, 1), (2, 1)), "RAS") if reoriented else None
    geometry = Geometry.build(shape, (1, 2, 3, 10, 9, 15), (16, 32, 32), reorient)
    doc = W.from_json_bytes(W.to_json_bytes(W.encode_geometry(geometry, (16, 32, 32))), "info")
    assert W.decode_geometry(doc, shape) == geometry


_GOOD = {"crop_box": [0] * 6, "spatial_size": [2, 2, 2]}


@pytest.mark.parametrize("doc", [None, {**_GOOD, "crop_box": [0] * 5}, {**_GOOD, "spatial_size": [2, 2, 0]},
                                 {**_GOOD, "reorient": {"ornt": [[0, 1], [0, 1], [2, 1]], "codes": "RAS"}},
                                 {**_GOOD, "reorient": {"ornt": [[0, 2], [1, 1], [2, 1]], "codes": "RAS"}}])
def test_a_malformed_geometry_from_a_server_is_one_line(doc: object) -> None:
    with pytest.raises(SegVolError, match="the server's geometry"):
        W.decode_geometry(doc, (4, 4, 4))


def test_typed_points_travel_as_rows() -> None:
    """A :class:`segvol_rt.types.Points` (as the local API takes it) is sent as (i, j, k, label) rows."""
    from segvol_rt.types import Points

    raw = W.encode_request("liver", None, Points(np.array([[1, 2, 3], [4, 5, 6]]), np.array([1, 0])), {})
    assert W.decode_request(raw)["points"] == [[1, 2, 3, 1], [4, 5, 6, 0]]
