"""Architecture sizes of a SegVol model, shared by the export and the runtime.

The released SegVol is :func:`SegVolConfig.official`. Smaller configurations of
the same architecture (tests, the demo model) change only these numbers; the
runtime reads them from the manifest, so window size and patch grid are never
hard-coded outside this file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from segvol_rt.errors import SegVolError

PROMPT_TEMPLATE = "A computerized tomography of a {}."


@dataclass(frozen=True)
class TextConfig:
    """CLIP text transformer sizes (ViT-B/32 text tower for the official model)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    num_layers: int = 12
    num_heads: int = 8
    intermediate_size: int = 2048
    max_length: int = 77
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 49407
    layer_norm_eps: float = 1e-5


@dataclass(frozen=True)
class SegVolConfig:
    """SegVol architecture. Spatial sizes are (D, H, W) in model space."""

    spatial_size: tuple[int, int, int] = (32, 256, 256)
    patch_size: tuple[int, int, int] = (4, 16, 16)
    embed_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    encoder_mlp_dim: int = 3072
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    mask_in_chans: int = 16
    text: TextConfig = field(default_factory=TextConfig)
    prompt_template: str = PROMPT_TEMPLATE

    def __post_init__(self) -> None:
        for s, p in zip(self.spatial_size, self.patch_size):
            if s % p:
                raise SegVolError(f"spatial_size {self.spatial_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.encoder_heads or self.embed_dim % 8:
            raise SegVolError(f"embed_dim {self.embed_dim} must divide by encoder_heads and by 8")

    @classmethod
    def official(cls) -> SegVolConfig:
        return cls()

    @classmethod
    def tiny(cls) -> SegVolConfig:
        """A few-kB model of the same architecture, for fast tests."""
        return cls(
            spatial_size=(16, 64, 64),
            patch_size=(4, 16, 16),
            embed_dim=32,
            encoder_depth=2,
            encoder_heads=2,
            encoder_mlp_dim=64,
            decoder_depth=2,
            decoder_heads=2,
            decoder_mlp_dim=64,
            iou_head_hidden_dim=16,
            text=TextConfig(vocab_size=49408, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
        )

    # -- derived sizes -------------------------------------------------
    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Patch grid (d, h, w) of the image embedding."""
        return tuple(s // p for s, p in zip(self.spatial_size, self.patch_size))  # type: ignore[return-value]

    @property
    def low_res_size(self) -> tuple[int, int, int]:
        """Spatial size of the decoder's low-res logits: 4x the patch grid."""
        return tuple(4 * g for g in self.grid_size)  # type: ignore[return-value]

    @property
    def num_patches(self) -> int:
        d, h, w = self.grid_size
        return d * h * w

    @property
    def patch_dim(self) -> int:
        pd, ph, pw = self.patch_size
        return pd * ph * pw

    # -- (de)serialisation --------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegVolConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SegVolError(f"unknown SegVol config fields: {sorted(unknown)}")
        kwargs = dict(data)
        if "text" in kwargs and isinstance(kwargs["text"], dict):
            kwargs["text"] = TextConfig(**kwargs["text"])
        for key in ("spatial_size", "patch_size"):
            if key in kwargs:
                kwargs[key] = tuple(int(v) for v in kwargs[key])
        return cls(**kwargs)
