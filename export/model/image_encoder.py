"""SegVol's image encoder: a plain 3D ViT (MONAI ``ViT`` with a perceptron patch
embedding, no class token), returning the embedding as a volume.

Parameter names mirror MONAI's ``ViT`` (identical in MONAI 0.9 to 1.3), so the
released weights load with strict key matching:

* ``patch_embedding.position_embeddings`` (1, n_patches, C)
* ``patch_embedding.patch_embeddings.1.{weight,bias}``: a Linear over each
  flattened patch, inputs ordered (pD, pH, pW, c)
* ``blocks.N.{norm1,attn.qkv,attn.out_proj,norm2,mlp.linear1,mlp.linear2}``
* ``norm``

Tokens run over the patch grid in (d, h, w) order, w fastest, so
``tokens.transpose(1, 2).reshape(B, C, d, h, w)`` is the embedding volume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segvol_rt.io.config import SegVolConfig

LAYER_NORM_EPS = 1e-5


class PatchEmbedding(nn.Module):
    """(B, c, D, H, W) image -> (B, n_patches, C) tokens with position embeddings.

    The projection is stored as MONAI stores it, a Linear whose input is the
    patch flattened as (pD, pH, pW, c); it is applied as a strided Conv3d with
    the same weights (viewed as a (C, c, pD, pH, pW) kernel), which computes
    the same sums without an 8-D transpose in the exported graph.
    """

    def __init__(self, in_channels: int, patch_size: tuple[int, int, int], num_patches: int, dim: int):
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = tuple(patch_size)
        patch_dim = in_channels * self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        # Slot 0 held MONAI's parameter-free einops Rearrange; it stays so the
        # Linear's keys are ``patch_embeddings.1.*``.
        self.patch_embeddings = nn.Sequential(nn.Identity(), nn.Linear(patch_dim, dim))
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_patches, dim))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02, a=-2.0, b=2.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        linear = self.patch_embeddings[1]
        pd, ph, pw = self.patch_size
        kernel = linear.weight.view(-1, pd, ph, pw, self.in_channels).permute(0, 4, 1, 2, 3)
        grid = F.conv3d(image, kernel, linear.bias, stride=self.patch_size)  # (B, C, d, h, w)
        tokens = grid.flatten(2).transpose(1, 2)  # (B, d*h*w, C)
        return tokens + self.position_embeddings


class SelfAttention(nn.Module):
    """Multi-head self-attention with a bias-free fused qkv projection.

    The qkv output features are laid out (3, heads, head_dim), as MONAI's
    ``"b h (qkv l d) -> qkv b l h d"`` rearrange reads them.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.out_proj = nn.Linear(dim, dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, head_dim)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.out_proj(out)


class MLP(nn.Module):
    """Linear -> exact (erf) GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.gelu(self.linear1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, mlp_dim: int, num_heads: int):
        super().__init__()
        self.mlp = MLP(dim, mlp_dim)
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ImageEncoder(nn.Module):
    """(B, 1, D, H, W) image in model space -> (B, C, d, h, w) embedding.

    ``(D, H, W)`` is ``config.spatial_size`` and ``(d, h, w)`` its patch grid
    ``config.grid_size``; C is ``config.embed_dim``.
    """

    in_channels = 1

    def __init__(self, config: SegVolConfig):
        super().__init__()
        self.grid_size = config.grid_size
        dim = config.embed_dim
        self.patch_embedding = PatchEmbedding(self.in_channels, config.patch_size, config.num_patches, dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, config.encoder_mlp_dim, config.encoder_heads) for _ in range(config.encoder_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self._init_linears()

    def _init_linears(self) -> None:
        # MONAI's initialisation, so a model trained from scratch starts alike.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(image)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)  # (B, N, C)
        d, h, w = self.grid_size
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], d, h, w)
