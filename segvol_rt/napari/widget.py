"""The SegVol dock widget for napari: a thin app over :class:`segvol_rt.napari.session.Session`.

Open a NIfTI file or a DICOM series; the image layer and the prompt layers
carry the scan's voxel size and affine (:mod:`segvol_rt.napari.prompts`), so
napari shows world millimetres and a prompt's data coordinates are the
scan's voxel indices, as ``segvol-rt infer`` takes them. Prompts: a target
name (completed from the model's text table), points in the *segvol points*
layer (positive, or negative with the box ticked), rectangles in the *segvol
box* layer (plus the slice range across them). **Segment** runs off the UI
thread (napari's worker, with its progress bar and ours); the result becomes
a Labels layer named after the target, coloured from the SNOMED table of
the DICOM SEG writer; a follow-up for the same target replaces its layer's
mask, **Undo** brings the previous one back, a new target adds a layer.
**Save** writes the masks with the CLI's writers (NIfTI and sidecar, or a
DICOM SEG for a DICOM scan).

Nothing the widget runs raises into napari - a job in the worker, its
hand-back on the UI thread, reading the prompts, undo: each outcome is a
value or our one-line message (:func:`guarded`), shown in napari's
notifications, never a traceback dialog. An unexpected exception (a bug)
is logged with its traceback and shown on one line too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from segvol_rt.backends.select import BACKENDS
from segvol_rt.errors import SegVolError, one_line
from segvol_rt.io.artifacts import PRECISIONS
from segvol_rt.napari import prompts as NP
from segvol_rt.napari.session import ModelChoice, Session, target_names
from segvol_rt.types import Request

log = logging.getLogger(__name__)

POINTS_LAYER = "segvol points"
BOX_LAYER = "segvol box"
POSITIVE_COLOUR, NEGATIVE_COLOUR = "lime", "red"
CT_WINDOW = (-160.0, 240.0)  # soft tissue: level 40, width 400 HU
RESULT_OPACITY = 0.6
AXIAL_ORDER = (2, 1, 0)  # world (x, y, z) RAS mm: slice along z, rows y, columns x
RADIOLOGICAL = ("up", "left")  # anterior up, the patient's right on the viewer's left
DEFAULT_PRECISION = "default"  # the precision box's first item: the backend's default (None)


@dataclass
class Outcome:
    """What a job returns to the UI thread: its value, or ``error`` (one line); ``seconds`` it ran."""

    value: Any = None
    error: str | None = None
    seconds: float = 0.0


def guarded(fn: Callable[..., Any], *args: Any) -> Outcome:
    """``fn(*args)`` as an :class:`Outcome`; a :class:`SegVolError` becomes its
    message, anything else (a bug) ``internal error: ...`` with the traceback logged."""
    start = time.perf_counter()
    try:
        value = fn(*args)
    except SegVolError as exc:
        return Outcome(error=" ".join(str(exc).split()), seconds=time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - a bug: one line in napari, the traceback in the log
        log.exception("segvol-rt napari job failed")
        return Outcome(error=f"internal error: {one_line(exc)}", seconds=time.perf_counter() - start)
    return Outcome(value, seconds=time.perf_counter() - start)


def _scan_name(path: Path | None) -> str:
    """The image layer's name: the file's or folder's name (a DICOMweb URL's last part)."""
    return (path.name if path is not None else "") or "scan"


def _row(*widgets: QWidget) -> QHBoxLayout:
    line = QHBoxLayout()
    for widget in widgets:
        line.addWidget(widget)
    return line


class SegVolWidget(QWidget):
    """The dock widget (see the module docstring). ``finished`` is emitted with the
    job's kind (open, segment, undo, save) or ``error`` once its outcome is shown."""

    finished = Signal(str)

    def __init__(self, napari_viewer: Any, session: Session | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.session = session or Session()
        self.busy = False
        self.last_error: str | None = None
        self.last_target: str | None = None
        self.latency: dict[str, float] = {}  # the last Segment: click -> layer set, and the model's part
        self.saved: list[Path] = []
        self.layers: dict[str, Any] = {}  # target name -> its Labels layer
        self.image_layer: Any = None
        self.points_layer: Any = None
        self.box_layer: Any = None
        self.transform: NP.LayerTransform | None = None
        self._worker: Any = None
        self._build()

    # -- the form ----------------------------------------------------------------------
    def _build(self) -> None:
        self.artifacts_edit = QLineEdit(placeholderText="the demo model")
        self.server_edit = QLineEdit(placeholderText="local (or http://127.0.0.1:8000)")
        self.backend_box = self._choice_box(BACKENDS, "the local model's backend (a server runs its own); "
                                                      "auto: the fastest that runs here")
        self.precision_box = self._choice_box((DEFAULT_PRECISION, *PRECISIONS),
                                              "what the local backend computes in: fp16 needs fp16 graphs "
                                              "(segvol-rt export --precision fp16), bf16 the openvino backend "
                                              "on a CPU that offers it")
        self.target_edit = QLineEdit(placeholderText="liver, spleen, ...")
        self.negative_box = QCheckBox("new points are negative")
        self.negative_box.toggled.connect(self._point_sign_changed)
        self.zoom_in_box = QCheckBox("zoom-in")
        self.zoom_in_box.setChecked(True)
        self.first_slice, self.last_slice = self._slice_box(), self._slice_box()
        slices = _row(self.first_slice, self.last_slice)
        form = QFormLayout()
        form.addRow("artifacts", self.artifacts_edit)
        form.addRow("server", self.server_edit)
        form.addRow("backend", _row(self.backend_box, self.precision_box))
        form.addRow("target", self.target_edit)
        form.addRow("points", self.negative_box)
        form.addRow("box slices", slices)
        form.addRow("", self.zoom_in_box)
        self.open_file_button = self._button("Open NIfTI…", self._ask_open_file)
        self.open_dicom_button = self._button("Open DICOM folder…", self._ask_open_dicom)
        self.segment_button = self._button("Segment", self.segment)
        self.undo_button = self._button("Undo", self.undo)
        self.save_button = self._button("Save…", self._ask_save)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.status = QLabel("open a scan")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(_row(self.open_file_button, self.open_dicom_button))
        layout.addLayout(form)
        layout.addLayout(_row(self.segment_button, self.undo_button, self.save_button))
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def _button(self, text: str, slot: Callable[[], Any]) -> QPushButton:
        button = QPushButton(text)
        button.clicked.connect(lambda _checked=False: slot())
        return button

    @staticmethod
    def _choice_box(items: Sequence[str], tip: str) -> QComboBox:
        box = QComboBox()
        box.addItems(list(items))
        box.setToolTip(tip)
        return box

    @staticmethod
    def _slice_box() -> QSpinBox:
        box = QSpinBox()
        box.setRange(-1, 1 << 20)
        box.setValue(-1)
        box.setSpecialValueText("its slice")  # -1: the rectangle's own slice
        box.setToolTip("first / last voxel index of the box across the rectangle (along the axis it was drawn on); "
                       "'its slice': the rectangle's own slice")
        return box

    def model_choice(self) -> ModelChoice:
        """The model the form names."""
        precision = self.precision_box.currentText()
        return ModelChoice(self.artifacts_edit.text().strip() or None, self.server_edit.text().strip() or None,
                           backend=self.backend_box.currentText(),
                           precision=None if precision == DEFAULT_PRECISION else precision)

    def slice_range(self) -> tuple[int, int] | None:
        """The box's first and last slice across the rectangle, or None (its own slice)."""
        first, last = self.first_slice.value(), self.last_slice.value()
        if first < 0 and last < 0:
            return None
        if first < 0 or last < 0:
            raise SegVolError("box slices: give both the first and the last slice (or neither)")
        return first, last

    # -- jobs --------------------------------------------------------------------------------
    def _run(self, kind: str, description: str, fn: Callable[..., Any], args: tuple[Any, ...],
             apply: Callable[[Outcome], None]) -> None:
        """Run ``fn(*args)`` in napari's worker thread; ``apply`` its outcome on the UI thread."""
        if self.busy:
            self._emit(kind, Outcome(error="segvol-rt is busy; wait for the running job"))
            return
        from napari.qt.threading import create_worker

        self._set_busy(True, description)
        worker = create_worker(guarded, fn, *args, _progress={"desc": f"segvol-rt: {description}"})
        worker.returned.connect(lambda outcome: self._done(kind, outcome, apply))
        self._worker = worker
        worker.start()

    def _done(self, kind: str, outcome: Outcome, apply: Callable[[Outcome], None]) -> None:
        self._set_busy(False, "")
        self._emit(kind, outcome if outcome.error is not None else guarded(apply, outcome))

    def _emit(self, kind: str, outcome: Outcome) -> None:
        """Show a failed ``outcome`` (one line), then emit ``finished`` (``kind``, or ``error``)."""
        if outcome.error is not None:
            self._fail(outcome.error)
        self.finished.emit(kind if outcome.error is None else "error")

    def _set_busy(self, busy: bool, description: str) -> None:
        self.busy = busy
        self.progress.setRange(0, 0 if busy else 1)  # 0..0: Qt's busy (indeterminate) bar
        for button in (self.open_file_button, self.open_dicom_button, self.segment_button, self.undo_button,
                       self.save_button):
            button.setEnabled(not busy)
        if busy:
            self.status.setText(description + "…")

    def _fail(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.last_error = message
        self.status.setText(message)
        show_error(message)

    # -- open ---------------------------------------------------------------------------
    def _ask_open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a CT scan", "", "NIfTI (*.nii *.nii.gz);;All files (*)")
        if path:
            self.open_scan(path)

    def _ask_open_dicom(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a DICOM series folder")
        if path:
            self.open_scan(path)

    def open_scan(self, path: str | Path) -> None:
        """Read ``path`` and load the model (a job); the scan's layers replace the last scan's."""
        choice = self.model_choice()

        def job() -> Any:
            scan = self.session.open(path, choice)
            return scan, target_names(choice)

        self._run("open", f"reading {Path(path).name} and loading {choice.describe()}", job, (), self._opened)

    def _opened(self, outcome: Outcome) -> None:
        scan, names = outcome.value
        for layer in [self.image_layer, self.points_layer, self.box_layer, *self.layers.values()]:
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.layers = {}
        self.transform = NP.layer_transform(scan.affine)
        kw = self.transform.kwargs()
        self.image_layer = self.viewer.add_image(scan.data, name=_scan_name(self.session.path), colormap="gray",
                                                 contrast_limits=CT_WINDOW, **kw)
        self.box_layer = self.viewer.add_shapes(ndim=3, name=BOX_LAYER, edge_color="yellow", face_color="transparent",
                                                edge_width=1, **kw)
        self.points_layer = self.viewer.add_points(ndim=3, name=POINTS_LAYER, features={"positive": np.zeros(0, bool)},
                                                   face_color=POSITIVE_COLOUR, size=4, **kw)
        self._point_sign_changed(self.negative_box.isChecked())
        self.points_layer.mode = "add"  # clicks on the canvas add points
        self.viewer.dims.order = AXIAL_ORDER
        scene = getattr(self.viewer, "scene", None)  # napari 0.9 moved the camera into the scene
        (scene.camera if scene is not None else self.viewer.camera).orientation2d = RADIOLOGICAL
        self.viewer.reset_view()
        completer = QCompleter(names, self)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.target_edit.setCompleter(completer)
        self.status.setText(f"{scan.source}: {scan.shape} voxels, {outcome.seconds:.1f} s")

    def _point_sign_changed(self, negative: bool) -> None:
        layer = self.points_layer
        if layer is None:
            return
        layer.selected_data = set()  # the colour below would recolour the selected points too
        layer.feature_defaults = {"positive": not negative}
        layer.current_face_color = NEGATIVE_COLOUR if negative else POSITIVE_COLOUR

    # -- prompts and results --------------------------------------------------------------
    def current_request(self) -> tuple[str, Request]:
        """The target's name and its scan-space request, from the form and the prompt layers."""
        text = self.target_edit.text().strip() or None
        points = box = None
        if self.points_layer is not None and self.points_layer in self.viewer.layers:
            points = NP.point_prompt(self.points_layer.data, self.points_layer.features["positive"].to_numpy())
        if self.box_layer is not None and self.box_layer in self.viewer.layers:
            rects = [d for d, kind in zip(self.box_layer.data, self.box_layer.shape_type) if kind == "rectangle"]
            box = NP.box_prompt(rects, self.slice_range())
        name = NP.target_name(text, box, points)
        return name, Request(text=text, box=box, points=points, zoom_in=self.zoom_in_box.isChecked())

    def segment(self) -> None:
        """The Segment button: segment the current prompts (a job)."""
        click = time.perf_counter()
        asked = guarded(self.current_request)
        if asked.error is not None:
            self._emit("segment", asked)
            return
        name, request = asked.value

        def shown(outcome: Outcome) -> None:
            self.show_result(name, outcome.value.mask)
            self.latency = {"click_to_layer_s": time.perf_counter() - click, "model_s": outcome.seconds}
            self.status.setText(f"{name}: {int(np.count_nonzero(outcome.value.mask))} voxels, {outcome.seconds:.2f} s")

        self._run("segment", f"segmenting {name}", self.session.segment, (name, request), shown)

    def show_result(self, name: str, mask: Any) -> None:
        """``name``'s Labels layer shows ``mask`` (uint8 (I, J, K)); made when it has none."""
        self.last_target = name
        layer = self.layers.get(name)
        if layer is not None and layer in self.viewer.layers:
            layer.data = np.asarray(mask)
            return
        from napari.utils.colormaps import DirectLabelColormap

        from segvol_rt.io.dicom_seg import segment_code

        colours = DirectLabelColormap(color_dict=NP.label_rgba(segment_code(name).rgb))
        kw = self.transform.kwargs() if self.transform is not None else {}
        active = self.viewer.layers.selection.active
        self.layers[name] = self.viewer.add_labels(np.asarray(mask), name=name, colormap=colours,
                                                   opacity=RESULT_OPACITY, **kw)
        if active is not None and active in (self.points_layer, self.box_layer):
            self.viewer.layers.selection.active = active  # the user goes on prompting where they were

    def undo(self) -> None:
        """The Undo button: the selected result layer's target (else the last one) goes back one result."""
        self._emit("undo", guarded(self._undo_once))

    def _undo_once(self) -> None:
        active = self.viewer.layers.selection.active
        name = next((n for n, layer in self.layers.items() if layer is active), self.last_target)
        if name is None:
            raise SegVolError("nothing to undo")
        previous = self.session.undo(name)
        if previous is not None:
            self.show_result(name, previous.mask)
            return
        layer = self.layers.pop(name, None)
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    # -- save ---------------------------------------------------------------------------------
    def _ask_save(self) -> None:
        dicom = self.session.dicom is not None
        filters = "DICOM SEG (*.dcm);;NIfTI (*.nii.gz *.nii)" if dicom else "NIfTI (*.nii.gz *.nii)"
        path, _ = QFileDialog.getSaveFileName(self, "Save the masks", "", filters)
        if path:
            self.save(path)

    def save(self, path: str | Path) -> None:
        """Write the current masks to ``path`` (a job; see :meth:`Session.save`)."""

        def written(outcome: Outcome) -> None:
            self.saved = list(outcome.value)
            self.status.setText("saved " + ", ".join(p.name for p in self.saved))

        self._run("save", f"saving {Path(path).name}", self.session.save, (path,), written)
