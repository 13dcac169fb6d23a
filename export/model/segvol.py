"""The SegVol model: image encoder, text encoder, prompt encoder and mask
decoder, with the official decoding path.

All spatial tensors are (B, ..., D, H, W) in model space; ``(D, H, W)`` is
``config.spatial_size`` and ``(d, h, w)`` its patch grid. Prompts are in the
model window's voxel indices, (D, H, W) component order as the official code
receives them, before SegVol's +0.5 shift:

* ``boxes``: (B, 6) or (B, 1, 6) as ``(d0, h0, w0, d1, h1, w1)``, corners inclusive;
* ``points``: ``(coords (B, N, 3), labels (B, N))``, labels 1 positive,
  0 negative, -1 ignored;
* ``text_embedding``: (B, C) from :meth:`SegVol.encode_text`.

The prompt mix is turned into one token sequence (:func:`prompt_tokens`, the
form of :mod:`segvol_rt.io.spec`) and decoded by :meth:`SegVol.decode_tokens`,
the graph the ONNX export wraps; the official order and padding rules make
the result equal to the official ``SegVol.forward_decoder``.

This module imports no export or ONNX code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segvol_rt.errors import SegVolError
from segvol_rt.export.model.image_encoder import ImageEncoder
from segvol_rt.export.model.mask_decoder import MaskDecoder
from segvol_rt.export.model.prompt_encoder import PromptEncoder
from segvol_rt.export.model.text_encoder import TextEncoder
from segvol_rt.io.config import SegVolConfig
from segvol_rt.io.spec import LABEL_BOX_MAX, LABEL_BOX_MIN, LABEL_PAD, LABEL_TEXT

Points = tuple[torch.Tensor, torch.Tensor]


class SegVol(nn.Module):
    """SegVol with the official parameter names (strict loading of released weights)."""

    def __init__(self, config: SegVolConfig | None = None):
        super().__init__()
        self.config = config or SegVolConfig.official()
        self.image_encoder = ImageEncoder(self.config)
        self.mask_decoder = MaskDecoder(self.config)
        self.prompt_encoder = PromptEncoder(self.config)
        self.text_encoder = TextEncoder(self.config)

    @classmethod
    def random(cls, config: SegVolConfig | None = None, seed: int = 0) -> SegVol:
        """A model with seeded random weights, for tests: parameters that
        initialise to a constant (LayerNorm affines, biases) get noise too, so
        a swapped or skipped parameter changes the output."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config)
            with torch.no_grad():
                for tensor in model.state_dict().values():
                    flat = tensor.flatten()
                    if tensor.is_floating_point() and bool((flat == flat[0]).all()):
                        tensor.add_(0.1 * torch.randn_like(tensor))
        return model.eval()

    # -- encoders --------------------------------------------------------
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) normalised image -> embedding (B, C, d, h, w)."""
        return self.image_encoder(image)

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) int64 CLIP token ids (prompt template applied) -> (B, C)."""
        return self.text_encoder(token_ids)

    # -- decoding ----------------------------------------------------------
    def decode_tokens(
        self,
        image_embedding: torch.Tensor,
        coords: torch.Tensor,
        labels: torch.Tensor,
        text_embedding: torch.Tensor,
    ) -> torch.Tensor:
        """The prompt decoder graph of :mod:`segvol_rt.io.spec`.

        Args:
            image_embedding: (B, C, d, h, w), or (1, ...) shared by all rows.
            coords: (B, N, 3) model-window voxel coords (D, H, W order).
            labels: (B, N) token kinds -1..4.
            text_embedding: (B, C); used by rows holding a text token (label 4),
                ignored (pass zeros) elsewhere.

        Returns:
            low-res logits (B, 1, 4d, 4h, 4w).
        """
        sparse = self.prompt_encoder.embed_tokens(coords, labels, text_embedding)
        has_text = (labels == LABEL_TEXT).any(dim=1)
        return self.mask_decoder(
            image_embedding,
            self.prompt_encoder.dense_pe(),
            sparse,
            self.prompt_encoder.dense_embedding(),
            text_embedding,
            has_text,
        )

    def decode_low_res(
        self,
        image_embedding: torch.Tensor,
        text_embedding: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        points: Points | None = None,
    ) -> torch.Tensor:
        """Official prompts -> low-res logits (B, 1, 4d, 4h, 4w)."""
        batch = _prompt_batch(image_embedding, text_embedding, boxes, points)
        coords, labels = prompt_tokens(batch, text_embedding, boxes, points, device=image_embedding.device)
        if text_embedding is None:
            text_embedding = image_embedding.new_zeros(batch, self.config.embed_dim)
        elif tuple(text_embedding.shape) != (batch, self.config.embed_dim):
            raise SegVolError(f"text_embedding has shape {tuple(text_embedding.shape)}, expected ({batch}, {self.config.embed_dim})")
        return self.decode_tokens(image_embedding, coords, labels, text_embedding)

    def upsample(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """(B, 1, 4d, 4h, 4w) -> (B, 1, D, H, W), trilinear, align_corners=False."""
        return F.interpolate(low_res_logits, size=self.config.spatial_size, mode="trilinear", align_corners=False)

    def forward_decoder(
        self,
        image_embedding: torch.Tensor,
        text_embedding: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        points: Points | None = None,
    ) -> torch.Tensor:
        """Official ``SegVol.forward_decoder``: prompts -> logits (B, 1, D, H, W)."""
        return self.upsample(self.decode_low_res(image_embedding, text_embedding, boxes, points))

    def forward(
        self,
        image: torch.Tensor,
        text_embedding: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        points: Points | None = None,
    ) -> torch.Tensor:
        """(B, 1, D, H, W) image + prompts -> logits (B, 1, D, H, W)."""
        return self.forward_decoder(self.encode_image(image), text_embedding, boxes, points)


def _prompt_batch(image_embedding, text_embedding, boxes, points) -> int:
    """The batch size the official prompt encoder infers: points, boxes, text, image."""
    sizes = [
        int(t.shape[0])
        for t in (points[0] if points is not None else None, boxes, text_embedding)
        if t is not None
    ]
    if len(set(sizes)) > 1:
        raise SegVolError(f"prompts disagree on the batch size: {sizes}")
    batch = sizes[0] if sizes else int(image_embedding.shape[0])
    if image_embedding.shape[0] not in (1, batch):
        raise SegVolError(f"image embedding batch {image_embedding.shape[0]} does not match prompt batch {batch}")
    return batch


def prompt_tokens(
    batch: int,
    text_embedding: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    points: Points | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Official prompts -> token sequence ``(coords (B, N, 3) float32, labels (B, N) int64)``.

    Order and padding as the official prompt encoder: the points, a pad point
    when there are points but no box, the box's two corners, the text token.
    """
    coords: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []

    def add(c: torch.Tensor, kinds: torch.Tensor) -> None:
        coords.append(c.to(device=device, dtype=torch.float32))
        labels.append(kinds.to(device=device, dtype=torch.int64))

    if points is not None:
        point_coords, point_labels = points
        if point_coords.ndim != 3 or point_coords.shape[-1] != 3 or tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
            raise SegVolError(
                f"points must be coords (B, N, 3) and labels (B, N); got {tuple(point_coords.shape)} and {tuple(point_labels.shape)}"
            )
        bad = set(torch.unique(point_labels).tolist()) - {-1, 0, 1}
        if bad:
            raise SegVolError(f"point labels must be 1 (positive), 0 (negative) or -1 (ignored); got {sorted(bad)}")
        add(point_coords, point_labels)
        if boxes is None:
            add(torch.zeros(batch, 1, 3), torch.full((batch, 1), LABEL_PAD))
    if boxes is not None:
        if boxes.ndim == 3 and boxes.shape[1] == 1:
            boxes = boxes[:, 0]
        if boxes.ndim != 2 or boxes.shape[1] != 6:
            raise SegVolError(f"boxes must be (B, 6) or (B, 1, 6); got {tuple(boxes.shape)}")
        add(boxes.reshape(batch, 2, 3), torch.tensor([LABEL_BOX_MIN, LABEL_BOX_MAX]).expand(batch, 2))
    if text_embedding is not None:
        add(torch.zeros(batch, 1, 3), torch.full((batch, 1), LABEL_TEXT))
    if not coords:
        return torch.zeros(batch, 0, 3, device=device), torch.zeros(batch, 0, dtype=torch.int64, device=device)
    return torch.cat(coords, dim=1), torch.cat(labels, dim=1)
