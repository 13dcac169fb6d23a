"""The interface every backend implements.

A backend runs the three graphs of an artifacts directory and nothing else:
it knows no geometry, prompts or zoom logic. The pipeline drives any backend
through :meth:`Backend.run` (or its three typed shortcuts) and never asks
which one it is. Arrays are numpy on CPU backends and cupy on CUDA backends
(``backend.xp``); shapes and dtypes are those of :mod:`segvol_rt.io.spec`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from segvol_rt.io import spec as S


class Backend(ABC):
    """Runs the graphs of one artifacts directory.

    Attributes:
        name: ``"onnxruntime"``, ``"tensorrt"`` or ``"torch"``.
        device: ``"cpu"`` or ``"cuda"``.
        xp: the array module of inputs and outputs (numpy or cupy).
        specs: graph name -> :class:`segvol_rt.io.spec.GraphSpec`.
        precision: what it computes in: ``"fp32"``, ``"fp16"`` (a graph variant or
            engines) or ``"bf16"`` (OpenVINO's inference precision on the fp32 graphs).
        threads: CPU threads it runs on (None: not a CPU backend, or not settable).
        concurrent: whether :meth:`run` may be called from several threads at once;
            the server wraps a backend that may not in
            :class:`segvol_rt.backends.wrap.SerialBackend`.
    """

    name: str = "?"
    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    concurrent: bool = False
    # Windows per image-encoder call; None: one on the CPU, the spec's max on a
    # GPU (see :meth:`preferred_batch`).
    window_batch: int | None = None
    # Rows per call of the other graphs on the CPU, measured per backend (see
    # :meth:`preferred_batch`); a graph not named here runs at the spec's max.
    cpu_batches: Mapping[str, int] = MappingProxyType({})

    def __init__(self, specs: Mapping[str, S.GraphSpec]):
        self.specs = dict(specs)

    @property
    def xp(self) -> Any:
        import numpy

        return numpy

    def describe(self) -> str:
        """One line for the CLI: engine, device and precision."""
        return f"{self.name} ({self.device})"

    def preferred_batch(self, graph: str) -> int:
        """Rows per call of ``graph`` the pipeline should send, within the spec's range.

        A GPU is filled by the largest batch. On the CPU the image encoder runs
        one window per call: at 2048 tokens its matrix products are already
        large, so batching gains no arithmetic efficiency, while the attention
        scores of a batch (12 x 2048 x 2048 floats per window at full size)
        overflow the caches (full size, 2 CPU cores, ONNX Runtime: 3.16 s per
        window at batch 8, 2.93 s at batch 1). The other graphs run at the
        spec's max, but on the CPU at :attr:`cpu_batches`' batch where the
        backend declares one (the prompt decoder: see
        :data:`segvol_rt.backends.onnxruntime.CPU_BATCHES`)."""
        lo, _, hi = (int(v) for v in self.specs[graph].ranges["B"])
        if graph != S.IMAGE_ENCODER:
            want = self.cpu_batches.get(graph) if self.device == "cpu" else None
            return hi if want is None else max(lo, min(hi, int(want)))
        if self.window_batch is not None:
            return max(lo, min(hi, int(self.window_batch)))
        return max(lo, 1) if self.device == "cpu" else hi

    def run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``feeds`` against the graph's spec, then run it."""
        self.specs[graph].validate_inputs(feeds)
        return self._run(graph, feeds)

    @abstractmethod
    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Run one graph on validated inputs; returns output name -> array."""

    # -- typed shortcuts ---------------------------------------------------
    def encode_image(self, image: Any) -> Any:
        """(B, 1, D, H, W) float32 in [0, 1] -> image embedding (B, C, d, h, w)."""
        return self.run(S.IMAGE_ENCODER, {"image": image})["image_embedding"]

    def encode_text(self, token_ids: Any) -> Any:
        """(B, L) int64 CLIP token ids -> text embedding (B, C)."""
        return self.run(S.TEXT_ENCODER, {"token_ids": token_ids})["text_embedding"]

    def decode(self, image_embedding: Any, coords: Any, labels: Any, text_embedding: Any) -> Any:
        """Prompt tokens (see :mod:`segvol_rt.io.spec`) -> low-res logits (B, 1, 4d, 4h, 4w)."""
        feeds = {
            "image_embedding": image_embedding,
            "prompt_coords": coords,
            "prompt_labels": labels,
            "text_embedding": text_embedding,
        }
        return self.run(S.PROMPT_DECODER, feeds)["low_res_logits"]

    def rest(self) -> None:  # noqa: B027 - optional hook
        """Give back what the last runs hold beyond the open graphs (their intermediate
        memory): the pipeline calls it after each decoding stage, before its array work,
        and the runtime after each request. A backend that keeps nothing does nothing."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions and device memory."""
