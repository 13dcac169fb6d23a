"""IO specs of the three graphs: the single source of truth for tensor names,
dtypes, axis order and min/opt/max shapes.

One :class:`GraphSpec` per graph drives the ONNX export's dynamic axes, the
TensorRT optimisation profiles, the runtime's input validation and the
manifest. Nothing else spells a tensor name.

Prompt decoder token formulation
--------------------------------
Official SegVol builds the decoder's sparse tokens as
``[points..., (pad point if points and no box), box corner 1, box corner 2, text]``
where each part is present only if that prompt is. To export this as one graph
that is *exact* for every combination, the decoder takes one token sequence
``prompt_coords (B, N, 3)`` with a kind per token, ``prompt_labels (B, N)``:

========  =====================================================
 label     token embedding (official equivalent)
========  =====================================================
 -1        ``not_a_point_embed`` (the pad point; coords ignored)
  0        PE(coords) + negative point embedding
  1        PE(coords) + positive point embedding
  2        PE(coords) + box corner 1 embedding
  3        PE(coords) + box corner 2 embedding
  4        the text embedding (coords ignored)
========  =====================================================

The runtime lays the tokens out in the official order and includes exactly
the tokens the official model would see, so no padding token ever enters the
attention. The text-similarity term is added iff a label-4 token is present;
``text_embedding`` is then read, otherwise it is ignored (pass zeros).
Coordinates are in the model window's voxel indices (D, H, W order), before
SegVol's +0.5 shift, which the graph applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from segvol_rt.errors import SegVolError
from segvol_rt.io.config import SegVolConfig

IMAGE_ENCODER = "image_encoder"
TEXT_ENCODER = "text_encoder"
PROMPT_DECODER = "prompt_decoder"
GRAPH_NAMES = (IMAGE_ENCODER, TEXT_ENCODER, PROMPT_DECODER)

# Token kinds of the prompt decoder (see module docstring).
LABEL_PAD = -1
LABEL_NEGATIVE = 0
LABEL_POSITIVE = 1
LABEL_BOX_MIN = 2
LABEL_BOX_MAX = 3
LABEL_TEXT = 4

DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_POINTS = 16
# Box corners (2), text (1) and the pad point (1) on top of the user's points.
EXTRA_TOKENS = 4


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    ``shape`` holds ints for fixed axes and axis names (str) for dynamic ones;
    ``axes`` names every axis, in order. ``min/opt/max`` give the values of
    the dynamic axes (by name) for profiles and validation.
    """

    name: str
    dtype: str
    axes: tuple[str, ...]
    shape: tuple[int | str, ...]

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def resolve(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(dims[d] if isinstance(d, str) else d for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "axes": list(self.axes), "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    """One graph: its file, inputs, outputs and the range of each dynamic axis."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # dynamic axis name -> (min, opt, max)
    ranges: Mapping[str, tuple[int, int, int]]

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def onnx_dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``dynamic_axes`` argument of ``torch.onnx.export``."""
        return {t.name: t.dynamic_axes() for t in (*self.inputs, *self.outputs) if t.dynamic_axes()}

    def profile(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Input name -> (min, opt, max) shapes, for a TensorRT optimisation profile."""
        out = {}
        for t in self.inputs:
            shapes = [t.resolve({k: v[i] for k, v in self.ranges.items()}) for i in range(3)]
            out[t.name] = (shapes[0], shapes[1], shapes[2])
        return out

    def validate_inputs(self, feeds: Mapping[str, Any]) -> None:
        """Check names, dtypes, ranks, fixed dims, dynamic-axis ranges and that a
        dynamic axis has one value across inputs. Raises :class:`SegVolError`."""
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise SegVolError(f"{self.name}: inputs missing {missing}, unexpected {extra}")
        seen: dict[str, int] = {}
        for t in self.inputs:
            arr = feeds[t.name]
            if str(arr.dtype) != t.dtype:
                raise SegVolError(f"{self.name}.{t.name}: dtype {arr.dtype}, expected {t.dtype}")
            if len(arr.shape) != len(t.shape):
                raise SegVolError(f"{self.name}.{t.name}: shape {tuple(arr.shape)}, expected axes {t.axes}")
            for axis, want, got in zip(t.axes, t.shape, arr.shape):
                if isinstance(want, int):
                    if got != want:
                        raise SegVolError(f"{self.name}.{t.name}: axis {axis} is {got}, expected {want}")
                    continue
                lo, _, hi = self.ranges[want]
                if not lo <= got <= hi:
                    raise SegVolError(f"{self.name}.{t.name}: axis {axis}={got} outside [{lo}, {hi}]")
                if seen.setdefault(want, got) != got:
                    raise SegVolError(f"{self.name}: axis {want} is {seen[want]} and {got} across inputs")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "ranges": {k: list(v) for k, v in self.ranges.items()},
        }


def graph_specs(
    config: SegVolConfig,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_points: int = DEFAULT_MAX_POINTS,
) -> dict[str, GraphSpec]:
    """The three graphs' specs for ``config``; keys are :data:`GRAPH_NAMES`."""
    if max_batch < 1 or max_points < 1:
        raise SegVolError("max_batch and max_points must be at least 1")
    c = config.embed_dim
    d, h, w = config.grid_size
    D, H, W = config.spatial_size
    ld, lh, lw = config.low_res_size
    L = config.text.max_length
    embedding = TensorSpec("image_embedding", "float32", ("B", "C", "d", "h", "w"), ("B", c, d, h, w))
    image = GraphSpec(
        IMAGE_ENCODER,
        inputs=(TensorSpec("image", "float32", ("B", "1", "D", "H", "W"), ("B", 1, D, H, W)),),
        outputs=(embedding,),
        ranges={"B": (1, max_batch, max_batch)},  # zoom-in windows run in full batches
    )
    text = GraphSpec(
        TEXT_ENCODER,
        inputs=(TensorSpec("token_ids", "int64", ("B", "L"), ("B", L)),),
        outputs=(TensorSpec("text_embedding", "float32", ("B", "C"), ("B", c)),),
        ranges={"B": (1, 1, max(max_batch, 16))},
    )
    decoder = GraphSpec(
        PROMPT_DECODER,
        inputs=(
            embedding,
            TensorSpec("prompt_coords", "float32", ("B", "N", "3"), ("B", "N", 3)),
            TensorSpec("prompt_labels", "int32", ("B", "N"), ("B", "N")),
            TensorSpec("text_embedding", "float32", ("B", "C"), ("B", c)),
        ),
        outputs=(TensorSpec("low_res_logits", "float32", ("B", "1", "d4", "h4", "w4"), ("B", 1, ld, lh, lw)),),
        ranges={"B": (1, 1, max_batch), "N": (1, 3, max_points + EXTRA_TOKENS)},
    )
    return {IMAGE_ENCODER: image, TEXT_ENCODER: text, PROMPT_DECODER: decoder}


def spec_from_dict(data: Mapping[str, Any]) -> GraphSpec:
    """Rebuild a :class:`GraphSpec` from the manifest."""

    def tensor(t: Mapping[str, Any]) -> TensorSpec:
        return TensorSpec(t["name"], t["dtype"], tuple(t["axes"]), tuple(t["shape"]))

    return GraphSpec(
        data["name"],
        tuple(tensor(t) for t in data["inputs"]),
        tuple(tensor(t) for t in data["outputs"]),
        {k: tuple(v) for k, v in data["ranges"].items()},
    )


def spec_mismatch(got: GraphSpec, want: GraphSpec) -> tuple[str, str] | None:
    """The first difference between two specs of one graph in tensor names,
    dtypes, axes and fixed sizes, as (JSON pointer inside the spec, what is
    wrong there); None when they agree. Dynamic-axis ranges are not compared."""
    if got.name != want.name:
        return "/name", f"is {got.name!r}, expected {want.name!r}"
    for io in ("inputs", "outputs"):
        have, expected = getattr(got, io), getattr(want, io)
        if [t.name for t in have] != [t.name for t in expected]:
            return f"/{io}", f"names {[t.name for t in have]}, expected {[t.name for t in expected]}"
        for k, (g, w) in enumerate(zip(have, expected)):
            found = _tensor_mismatch(g, w)
            if found:
                return f"/{io}/{k}{found[0]}", found[1]
    return None


def _tensor_mismatch(got: TensorSpec, want: TensorSpec) -> tuple[str, str] | None:
    if got.dtype != want.dtype:
        return "/dtype", f"is {got.dtype!r}, expected {want.dtype!r}"
    if tuple(got.axes) != tuple(want.axes) or len(got.shape) != len(want.shape):
        return "/axes", f"is {list(got.axes)} with shape {list(got.shape)}, expected {list(want.axes)}"
    for i, (g, w) in enumerate(zip(got.shape, want.shape)):
        if g != w or isinstance(g, str) != isinstance(w, str):
            return f"/shape/{i}", f"is {g!r}, expected {w!r} (axis {want.axes[i]})"
    return None


def ranges_problem(spec: GraphSpec) -> tuple[str, str] | None:
    """(JSON pointer inside the spec, what is wrong) when a tensor's axes and
    shape differ in length, a dynamic axis has no range, or a range is not
    ``min <= opt <= max``; None when the spec is consistent."""
    for io in ("inputs", "outputs"):
        for k, t in enumerate(getattr(spec, io)):
            if len(t.axes) != len(t.shape):
                return f"/{io}/{k}/shape", f"has {len(t.shape)} sizes for {len(t.axes)} axes {list(t.axes)}"
            for d in t.shape:
                if isinstance(d, str) and d not in spec.ranges:
                    return "/ranges", f"has no range for the dynamic axis {d!r} of {t.name}"
    for axis, values in spec.ranges.items():
        if len(values) != 3 or not values[0] <= values[1] <= values[2]:
            return f"/ranges/{axis}", f"is {list(values)}, not [min, opt, max] with min <= opt <= max"
    return None


def numpy_dtype(name: str) -> np.dtype:
    return np.dtype(name)


def check_tokens(labels: Sequence[int]) -> None:
    """Reject token sequences the official model could never see."""
    allowed = {LABEL_PAD, LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_BOX_MIN, LABEL_BOX_MAX, LABEL_TEXT}
    bad = sorted({int(v) for v in labels} - allowed)
    if bad:
        raise SegVolError(f"prompt labels {bad} are not token kinds {sorted(allowed)}")


class PointPrompts(Protocol):
    """Point prompts as the decoder takes them: ``coords (N, 3)`` integer
    (D, H, W) voxel indices and ``labels (N,)`` in {1, 0, -1}
    (:class:`segvol_rt.pipeline.prompts.Points` is one)."""

    @property
    def coords(self) -> np.ndarray: ...

    @property
    def labels(self) -> np.ndarray: ...


def decoder_tokens(points: PointPrompts | None, box: Sequence[int] | None, text: bool) -> tuple[np.ndarray, np.ndarray]:
    """Official sparse-token order -> ``coords (N, 3)`` float32, ``labels (N,)`` int32.

    ``[points..., pad point if points and no box, box min, box max, text]``
    (the LABEL_* values above); coordinates are (D, H, W) voxel indices of the
    image the decoder segments, ``box`` is inclusive ``(d0, h0, w0, d1, h1, w1)``;
    pad and text tokens carry zeros (ignored)."""
    coords: list[Sequence[float]] = []
    labels: list[int] = []
    if points is not None:
        coords.extend(points.coords.tolist())
        labels.extend(points.labels.tolist())
        if box is None:
            coords.append((0, 0, 0))
            labels.append(LABEL_PAD)
    if box is not None:
        coords.extend([tuple(box[:3]), tuple(box[3:])])
        labels.extend([LABEL_BOX_MIN, LABEL_BOX_MAX])
    if text:
        coords.append((0, 0, 0))
        labels.append(LABEL_TEXT)
    if not labels:
        raise SegVolError("give at least one prompt: text, box or points")
    return np.asarray(coords, dtype=np.float32).reshape(-1, 3), np.asarray(labels, dtype=np.int32)
