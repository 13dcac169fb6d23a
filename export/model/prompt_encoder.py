"""SegVol's prompt encoder (SAM's, made 3D): prompt tokens -> sparse embeddings,
plus the dense positional encoding of the image-embedding grid.

Prompts are one token sequence in the form of :mod:`segvol_rt.io.spec`:
``coords (B, N, 3)`` in model-window voxel indices, ``labels (B, N)`` with
the token kinds -1 (pad point), 0/1 (negative/positive point), 2/3 (box min/
max corner), 4 (the text embedding). Every token is computed without
data-dependent indexing, so one exported graph covers every prompt mix.

Quirks of the official encoder, reproduced on purpose:

* coordinates are shifted by +0.5 (voxel centres) before encoding;
* coordinate component 0 is divided by H, component 1 by D and component 2
  by W (``image_size[1], image_size[0], image_size[2]`` with
  ``image_size = (D, H, W)``); the dense grid encoding matches this, putting
  the H-axis position in component 0 and the D-axis position in component 1;
* a pad point's positional encoding is replaced by ``not_a_point_embed``.

``mask_downscaling`` is never used at inference (SegVol passes no mask
prompt) but holds released weights, so it exists for strict loading.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from segvol_rt.io.config import SegVolConfig
from segvol_rt.io.spec import (
    LABEL_BOX_MAX,
    LABEL_BOX_MIN,
    LABEL_NEGATIVE,
    LABEL_PAD,
    LABEL_POSITIVE,
    LABEL_TEXT,
)
from segvol_rt.ops.boxes import int3

# Row r of the additive table in embed_tokens holds token kind r + LABEL_PAD.
_TABLE_KINDS = (LABEL_PAD, LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_BOX_MIN, LABEL_BOX_MAX, LABEL_TEXT)
assert tuple(range(LABEL_PAD, LABEL_TEXT + 1)) == _TABLE_KINDS


class LayerNorm2d(nn.Module):
    """Channel LayerNorm of a (B, C, H, W) map, eps 1e-6 (SAM's)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of coordinates normalised to [0, 1]: with G the
    (3, C/2) Gaussian matrix, PE(c) = [sin(2 pi (2c - 1) G), cos(...)]."""

    def __init__(self, num_pos_feats: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_pos_feats))

    def encode(self, unit_coords: torch.Tensor) -> torch.Tensor:
        """(..., 3) coords in [0, 1] -> (..., C)."""
        x = (2 * unit_coords - 1) @ self.positional_encoding_gaussian_matrix
        x = 2 * math.pi * x
        return torch.cat([torch.sin(x), torch.cos(x)], dim=-1)

    def grid(self, size: tuple[int, int, int]) -> torch.Tensor:
        """Dense encoding of a (d, h, w) grid of cell centres -> (C, d, h, w)."""
        d, h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        centres = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n for n in (d, h, w)]
        zd, zh, zw = torch.meshgrid(*centres, indexing="ij")
        unit = torch.stack([zh, zd, zw], dim=-1)  # the official (x=H, y=D, z=W) component order
        return self.encode(unit).permute(3, 0, 1, 2)


class PromptEncoder(nn.Module):
    """Prompt tokens -> sparse embeddings (B, N, C); dense PE (1, C, d, h, w)."""

    num_point_embeddings = 4  # negative, positive, box min corner, box max corner

    def __init__(self, config: SegVolConfig):
        super().__init__()
        dim = config.embed_dim
        self.embed_dim = dim
        self.input_image_size = tuple(config.spatial_size)
        self.image_embedding_size = int3(config.grid_size)
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, dim)
        chans = config.mask_in_chans
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(chans // 4),
            nn.GELU(),
            nn.Conv2d(chans // 4, chans, kernel_size=2, stride=2),
            LayerNorm2d(chans),
            nn.GELU(),
            nn.Conv2d(chans, dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, (1, C, d, h, w)."""
        return self.pe_layer.grid(self.image_embedding_size).unsqueeze(0)

    def dense_embedding(self) -> torch.Tensor:
        """The no-mask dense prompt, (1, C, 1, 1, 1); broadcasts over the grid."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1)

    def encode_coords(self, coords: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) voxel coords (before the +0.5 shift) -> PE (B, N, C)."""
        d, h, w = self.input_image_size
        scale = coords.new_tensor([h, d, w])
        return self.pe_layer.encode((coords + 0.5) / scale)

    def embed_tokens(
        self, coords: torch.Tensor, labels: torch.Tensor, text_embedding: torch.Tensor | None
    ) -> torch.Tensor:
        """Prompt tokens -> sparse embeddings (B, N, C).

        ``labels`` are token kinds (any numeric dtype). Point and corner
        tokens are PE + their learned embedding; pad tokens are
        ``not_a_point_embed`` alone; text tokens are ``text_embedding`` (B, C)
        itself. Every value equals the official one bit for bit.
        """
        kinds = labels.long()
        is_text = (kinds == LABEL_TEXT).unsqueeze(-1)
        is_positional = ((kinds >= LABEL_NEGATIVE) & (kinds <= LABEL_BOX_MAX)).unsqueeze(-1)
        pe = self.encode_coords(coords)
        zero = pe.new_zeros(())
        # Additive table by kind: pad, negative, positive, min corner, max corner, text (none).
        table = torch.cat(
            [self.not_a_point_embed.weight]
            + [emb.weight for emb in self.point_embeddings]
            + [self.not_a_point_embed.weight.new_zeros(1, self.embed_dim)]
        )
        # Max/Min, not clamp: TensorRT's Clip takes float tensors only (int64 Clip would not parse).
        index = torch.minimum(torch.maximum(kinds - LABEL_PAD, kinds.new_zeros(())), kinds.new_full((), table.shape[0] - 1))
        added = table[index]
        tokens = torch.where(is_positional, pe, zero) + added
        if text_embedding is not None:
            tokens = torch.where(is_text, text_embedding.unsqueeze(1).to(tokens.dtype), tokens)
        return tokens
