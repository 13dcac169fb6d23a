"""The SegVol dock widget in a real napari viewer (napari's fixtures, pytest-qt,
under Xvfb; run as tests/napari/conftest.py says): open the demo phantom,
type "liver", add a point, Segment, and the Labels layer equals
``SegVolRuntime.segment`` voxel for voxel; follow-up, undo, a second target,
save; the same through a local ``segvol-rt serve``; errors as one line in
napari's notifications; a screenshot of the canvas kept under
``$SEGVOL_TEST_ARTIFACTS/napari`` (default ``test-artifacts/napari``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segvol_rt.demo.model import shipped_artifacts_dir
from segvol_rt.demo.phantom import make_phantom
from segvol_rt.io.dicom_seg import segment_code
from segvol_rt.runtime import SegVolRuntime

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("SEGVOL_TEST_ARTIFACTS", REPO / "test-artifacts")) / "napari"  # as tests/app/test_ohif.py
JOB_TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    ph = make_phantom(0)
    path = tmp_path_factory.mktemp("scan") / "phantom.nii.gz"
    ph.save(path)
    return ph, path


@pytest.fixture(scope="module")
def reference(phantom: tuple[Any, Path]) -> SegVolRuntime:
    rt = SegVolRuntime.load(shipped_artifacts_dir(), backend="onnxruntime", threads=1)
    rt.set_volume(phantom[1])
    return rt


def _widget(viewer: Any, server: str | None = None) -> Any:
    from segvol_rt.napari.widget import SegVolWidget

    widget = SegVolWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SegVol")
    widget.artifacts_edit.setText("" if server else str(shipped_artifacts_dir()))
    widget.server_edit.setText(server or "")
    return widget


def _job(qtbot: Any, widget: Any, action: Any) -> str:
    """Run ``action`` and wait for the widget's outcome (its kind, or 'error')."""
    with qtbot.waitSignal(widget.finished, timeout=JOB_TIMEOUT_MS) as blocker:
        action()
    return str(blocker.args[0])


def _centre(ph: Any, organ: str) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.rint(ph.centroid(organ)))  # type: ignore[return-value]


def _segment(qtbot: Any, widget: Any) -> None:
    from qtpy.QtCore import Qt

    kind = _job(qtbot, widget, lambda: qtbot.mouseClick(widget.segment_button, Qt.MouseButton.LeftButton))
    assert kind == "segment", widget.last_error


def test_liver_from_a_text_and_a_point_equals_the_runtime(make_napari_viewer, qtbot, phantom, reference, tmp_path):
    ph, path = phantom
    viewer = make_napari_viewer(show=True)
    widget = _widget(viewer)
    with qtbot.waitSignal(widget.finished, timeout=JOB_TIMEOUT_MS) as blocker:
        widget.open_scan(path)
        # off the UI thread: the call returned at once, the busy bar runs, the buttons wait
        assert widget.busy and widget.progress.maximum() == 0 and not widget.segment_button.isEnabled()
    assert blocker.args == ["open"], widget.last_error
    assert widget.segment_button.isEnabled() and widget.progress.maximum() == 1
    image = widget.image_layer
    x = np.array([5.0, 7.0, 3.0])
    np.testing.assert_allclose(image.data_to_world(x), (ph.affine @ [*x, 1])[:3], atol=1e-9)  # world mm = the file's
    for layer in (widget.points_layer, widget.box_layer):  # prompt layers share the image's voxel grid
        np.testing.assert_allclose(layer.data_to_world(x), image.data_to_world(x), atol=1e-9)
    assert widget.target_edit.completer().model().rowCount() > 10  # names of the text table
    qtbot.keyClicks(widget.target_edit, "liver")
    c = _centre(ph, "liver")
    widget.points_layer.add(np.array(c, dtype=float))
    _segment(qtbot, widget)
    layer = viewer.layers["liver"]
    np.testing.assert_array_equal(layer.data, reference.segment(text="liver", points=[c]).mask)
    rgb = np.array(segment_code("liver").rgb) / 255
    np.testing.assert_allclose(layer.colormap.color_dict[1][:3], rgb, atol=1e-6)
    np.testing.assert_allclose(layer.affine.affine_matrix @ np.diag([*layer.scale, 1]), ph.affine, atol=1e-9)
    viewer.dims.set_point(2, float((ph.affine @ [*c, 1])[2]))  # the axial slice through the point
    _screenshot(viewer, "phantom_liver.png", rgb)
    _follow_up_undo_and_a_new_target(qtbot, widget, viewer, ph, reference, c)
    assert _job(qtbot, widget, lambda: widget.save(tmp_path / "masks.nii.gz")) == "save", widget.last_error
    assert [p.name for p in widget.saved] == ["masks_liver.nii.gz", "masks_spleen.nii.gz", "masks.json"]


def _follow_up_undo_and_a_new_target(qtbot: Any, widget: Any, viewer: Any, ph: Any, reference: SegVolRuntime,
                                     c: tuple[int, int, int]) -> None:
    layer = viewer.layers["liver"]
    first = layer.data.copy()
    encoded = widget.session.model.stats["timings"]["encode_zoom_out"]
    widget.negative_box.setChecked(True)
    negative = (c[0] + 6, c[1], c[2])
    widget.points_layer.add(np.array(negative, dtype=float))
    assert widget.points_layer.features["positive"].tolist() == [True, False]
    _segment(qtbot, widget)
    assert viewer.layers["liver"] is layer  # the same layer, a new mask
    np.testing.assert_array_equal(layer.data, reference.segment(text="liver", points=[c, (*negative, 0)]).mask)
    assert widget.session.model.stats["timings"]["encode_zoom_out"] == encoded  # cached encodings reused
    assert _job(qtbot, widget, widget.undo) == "undo"
    np.testing.assert_array_equal(layer.data, first)
    widget.points_layer.data = np.zeros((0, 3))
    widget.target_edit.setText("spleen")
    _segment(qtbot, widget)
    assert [ly.name for ly in viewer.layers][-2:] == ["liver", "spleen"]
    np.testing.assert_array_equal(viewer.layers["spleen"].data, reference.segment(text="spleen").mask)


def _screenshot(viewer: Any, name: str, rgb: np.ndarray) -> None:
    """Keep the canvas as an artifact; the organ's colour is on it."""
    from PIL import Image

    shot = viewer.screenshot(canvas_only=True, flash=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(shot).save(ARTIFACTS / name)
    window = viewer.screenshot(canvas_only=False, flash=False)  # with the dock widget (README's picture)
    Image.fromarray(window).save(ARTIFACTS / name.replace(".png", "_window.png"))
    pixels = shot[..., :3].reshape(-1, 3).astype(float) / 255
    # the label is blended at RESULT_OPACITY over grey CT: its hue shows as red > green > blue
    tinted = (pixels[:, 0] - pixels[:, 2] > 0.15) & (pixels[:, 0] > pixels[:, 1])
    assert tinted.sum() > 500, f"no {rgb} overlay on the canvas ({ARTIFACTS / name})"


def test_a_click_on_the_canvas_is_the_voxel_under_it(make_napari_viewer, qtbot, phantom):
    """A real mouse click in the axial, radiological view adds the point at the voxel under the
    cursor: screen -> world mm -> the points layer's data = the scan's (i, j, k)."""
    from qtpy.QtCore import QPoint, Qt

    ph, path = phantom
    viewer = make_napari_viewer(show=True)
    widget = _widget(viewer)
    assert _job(qtbot, widget, lambda: widget.open_scan(path)) == "open", widget.last_error
    c = _centre(ph, "liver")
    world = widget.image_layer.data_to_world(np.array(c, dtype=float))
    viewer.dims.set_point(2, float(world[2]))  # the axial slice through it
    canvas = viewer.window._qt_viewer.canvas  # napari's vispy canvas: world (displayed axes) -> canvas pixels
    to_canvas = canvas.view.transform * canvas.view.scene.transform
    x, y = to_canvas.map([world[d] for d in viewer.dims.displayed][::-1])[:2]
    viewer.layers.selection.active = widget.points_layer
    qtbot.mouseClick(canvas.native, Qt.MouseButton.LeftButton, pos=QPoint(round(float(x)), round(float(y))))
    qtbot.waitUntil(lambda: len(widget.points_layer.data) == 1, timeout=10_000)
    points = widget.current_request()[1].points
    assert np.abs(points.coords[0] - np.array(c)).max() <= 1, (points.coords, c)  # within a voxel of the target
    assert points.coords[0][2] == c[2] and points.labels.tolist() == [1]  # on the slice shown, positive


def test_a_box_from_a_rectangle_and_a_slice_range(make_napari_viewer, qtbot, phantom, reference):
    ph, path = phantom
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    assert _job(qtbot, widget, lambda: widget.open_scan(path)) == "open", widget.last_error
    idx = np.argwhere(ph.mask("spleen"))
    (i0, j0, k0), (i1, j1, k1) = idx.min(0), idx.max(0)
    k = (k0 + k1) // 2  # drawn on an axial slice, across it the slice range
    corners = np.array([[i0, j0, k], [i0, j1, k], [i1, j1, k], [i1, j0, k]], dtype=float)
    widget.box_layer.add_rectangles(corners)
    widget.first_slice.setValue(int(k0))
    widget.last_slice.setValue(int(k1))
    _segment(qtbot, widget)
    box = tuple(int(v) for v in (i0, j0, k0, i1, j1, k1))
    np.testing.assert_array_equal(viewer.layers["box"].data, reference.segment(box=box).mask)


def test_a_dicom_series_opens_in_mm_and_saves_a_seg(make_napari_viewer, qtbot, phantom, tmp_path):
    pytest.importorskip("highdicom")
    from segvol_rt.io.dicom import read_dicom_series
    from tests.support.dicom_series import SeriesSpec, write_series

    write_series(tmp_path / "series", phantom[0].image, SeriesSpec(slice_step=-2.5))  # descending positions
    scan = read_dicom_series(tmp_path / "series")
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    assert _job(qtbot, widget, lambda: widget.open_scan(tmp_path / "series")) == "open", widget.last_error
    x = np.array([3.0, 4.0, 5.0])
    np.testing.assert_allclose(widget.image_layer.data_to_world(x), (scan.affine @ [*x, 1])[:3], atol=1e-6)
    widget.target_edit.setText("liver")
    _segment(qtbot, widget)
    assert _job(qtbot, widget, lambda: widget.save(tmp_path / "liver.dcm")) == "save", widget.last_error
    assert [p.name for p in widget.saved] == ["liver.dcm"]


def test_the_backend_and_precision_boxes_choose_the_local_model(make_napari_viewer):
    """The form's backend and precision boxes: auto and the backend's default at first, then
    what is picked (tests/napari/test_session.py runs a model so chosen)."""
    from segvol_rt.backends.select import BACKENDS
    from segvol_rt.io.artifacts import PRECISIONS

    widget = _widget(make_napari_viewer())
    assert [widget.backend_box.itemText(i) for i in range(widget.backend_box.count())] == list(BACKENDS)
    assert [widget.precision_box.itemText(i) for i in range(widget.precision_box.count())][1:] == list(PRECISIONS)
    choice = widget.model_choice()
    assert (choice.backend, choice.precision) == ("auto", None)
    widget.backend_box.setCurrentText("openvino")
    widget.precision_box.setCurrentText("bf16")
    choice = widget.model_choice()
    assert (choice.backend, choice.precision, choice.artifacts) == ("openvino", "bf16", str(shipped_artifacts_dir()))


def test_errors_are_one_line_notifications(make_napari_viewer, qtbot, phantom, tmp_path):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    widget = _widget(viewer)
    seen: list[Any] = []
    notification_manager.notification_ready.connect(seen.append)
    assert _job(qtbot, widget, widget.segment) == "error"  # nothing open, no prompt
    assert _job(qtbot, widget, lambda: widget.open_scan(tmp_path / "missing.nii.gz")) == "error"
    assert "missing.nii.gz" in widget.last_error and "\n" not in widget.last_error
    widget.target_edit.setText("liver")
    widget.open_scan(phantom[1])
    assert _job(qtbot, widget, widget.segment) == "error" and "busy" in widget.last_error  # one job at a time
    qtbot.waitUntil(lambda: not widget.busy, timeout=JOB_TIMEOUT_MS)
    assert widget.image_layer is not None, widget.last_error
    widget.points_layer.add(np.array([500.0, 5.0, 5.0]))  # outside the scan
    assert _job(qtbot, widget, widget.segment) == "error"
    assert "\n" not in widget.last_error and "liver" not in viewer.layers
    widget.first_slice.setValue(3)  # a slice range needs both ends
    widget.box_layer.add_rectangles(np.array([[10, 10, 5], [10, 40, 5], [40, 40, 5], [40, 10, 5]], dtype=float))
    assert _job(qtbot, widget, widget.segment) == "error" and "both" in widget.last_error
    messages = [str(n.message) for n in seen]
    assert len(messages) >= 4 and all("\n" not in m and "Traceback" not in m for m in messages)
    assert all(getattr(n, "exception", None) is None for n in seen)  # no traceback to show


def _serve_venv() -> Path | None:
    venv = Path(os.environ.get("SEGVOL_SERVE_VENV", Path.home() / ".cache" / "segvol-rt" / "serve-venv"))
    return venv if (venv / "bin" / "segvol-rt").exists() else None


def test_the_same_through_a_local_server(make_napari_viewer, qtbot, phantom, reference, tmp_path):
    pytest.importorskip("tritonclient.http")
    venv = _serve_venv()
    if venv is None:
        pytest.skip("no serve venv (SEGVOL_SERVE_VENV; .ci/setup-serve.sh makes it)")
    from tests.support import serving

    ph, path = phantom
    server = serving.ServerProcess.started(venv, tmp_path, ["--threads", "1"])
    try:
        viewer = make_napari_viewer()
        widget = _widget(viewer, server.url)
        assert _job(qtbot, widget, lambda: widget.open_scan(path)) == "open", widget.last_error
        widget.target_edit.setText("liver")
        c = _centre(ph, "liver")
        widget.points_layer.add(np.array(c, dtype=float))
        _segment(qtbot, widget)
        np.testing.assert_array_equal(viewer.layers["liver"].data, reference.segment(text="liver", points=[c]).mask)
        assert "encode_zoom_out" in widget.session.current("liver").timings
        widget.negative_box.setChecked(True)
        widget.points_layer.add(np.array([c[0] + 6, c[1], c[2]], dtype=float))
        _segment(qtbot, widget)
        follow = reference.segment(text="liver", points=[c, (c[0] + 6, c[1], c[2], 0)]).mask
        np.testing.assert_array_equal(viewer.layers["liver"].data, follow)
        assert "encode_zoom_out" not in widget.session.current("liver").timings  # the server session's cache
        assert _job(qtbot, widget, lambda: widget.save(tmp_path / "served.nii.gz")) == "save", widget.last_error
        widget.session.close()
    finally:
        server.stop()


def test_a_bug_in_the_hand_back_is_one_line_too(make_napari_viewer, qtbot, monkeypatch):
    """An unexpected exception (not a SegVolError) on the UI thread is one line, its traceback only logged."""
    from segvol_rt.napari import widget as W

    viewer = make_napari_viewer()
    widget = _widget(viewer)

    def broken() -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(widget, "current_request", broken)
    assert _job(qtbot, widget, widget.segment) == "error"
    assert widget.last_error == "internal error: KeyError: 'a bug'"
    assert W.guarded(int, "x").error == "internal error: ValueError: invalid literal for int() with base 10: 'x'"
