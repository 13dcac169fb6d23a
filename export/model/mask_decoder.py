"""SegVol's mask decoder: SAM's two-way transformer over the image-embedding
grid and the prompt tokens, an upscaling head to 4x the grid, hypernetwork
mask prediction, and SegVol's text-similarity term.

Parameter names follow SAM / SegVol (``transformer.layers.N.self_attn.q_proj``,
``output_upscaling.0``, ``output_hypernetworks_mlps.i.layers.j`` ...), so the
released weights load strictly. SegVol always decodes with
``multimask_output=False``, which keeps mask 0 only; the other mask tokens
still take part in attention, so they are kept, but their hypernetworks and
the IoU head (whose outputs SegVol discards) are not evaluated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from segvol_rt.io.config import SegVolConfig

# Cross-attention projects to C / 2 inside (SAM's default, fixed in SegVol).
ATTENTION_DOWNSAMPLE = 2


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections to C / downsample."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1):
        super().__init__()
        internal = dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, internal)
        self.k_proj = nn.Linear(dim, internal)
        self.v_proj = nn.Linear(dim, internal)
        self.out_proj = nn.Linear(internal, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        v = self._heads(self.v_proj(v))
        attn = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        out = torch.softmax(attn, dim=-1) @ v  # (B, heads, Nq, c)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class MLPBlock(nn.Module):
    """lin1 -> ReLU -> lin2 (the two-way transformer's MLP)."""

    def __init__(self, dim: int, mlp_dim: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.relu(self.lin1(x)))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image attention, token MLP, image->token
    attention; post-norm after each. The first layer's self-attention sees no
    positional encoding and has no residual (SAM's ``skip_first_layer_pe``)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool):
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, ATTENTION_DOWNSAMPLE)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, ATTENTION_DOWNSAMPLE)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Tokens (B, T, C) and image (B, C, d, h, w) attend to each other.

    Returns the tokens (B, T, C) and the image tokens (B, d*h*w, C)."""

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, skip_first_layer_pe=(i == 0)) for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(dim, num_heads, ATTENTION_DOWNSAMPLE)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class HyperMLP(nn.Module):
    """``num_layers`` Linears with ReLU between (SAM's ``MLP``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    """Image embedding + prompt tokens -> low-res logits (B, 1, 4d, 4h, 4w)."""

    iou_head_depth = 3
    hypernetwork_depth = 3

    def __init__(self, config: SegVolConfig):
        super().__init__()
        dim = config.embed_dim
        d, h, w = config.grid_size
        self.transformer = TwoWayTransformer(config.decoder_depth, dim, config.decoder_heads, config.decoder_mlp_dim)
        self.num_mask_tokens = config.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(dim, dim // 4, kernel_size=2, stride=2),
            nn.LayerNorm((dim // 4, 2 * d, 2 * h, 2 * w)),
            nn.GELU(),
            nn.ConvTranspose3d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            HyperMLP(dim, dim, dim // 8, self.hypernetwork_depth) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = HyperMLP(dim, config.iou_head_hidden_dim, self.num_mask_tokens, self.iou_head_depth)
        self.txt_align_upscaled_embedding = nn.Linear(dim, dim // 8)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_embeddings: torch.Tensor,
        dense_embedding: torch.Tensor,
        text_embedding: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode mask 0.

        Args:
            image_embedding: (B, C, d, h, w); a batch of 1 is shared by all prompts.
            image_pe: (1, C, d, h, w) dense positional encoding.
            sparse_embeddings: (B, N, C) prompt tokens (N may be 0).
            dense_embedding: broadcastable to (B, C, d, h, w).
            text_embedding: (B, C), or None for no text term.
            text_mask: (B,) bool, which rows get the text term; None = all.

        Returns:
            low-res logits (B, 1, 4d, 4h, 4w).
        """
        b = sparse_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_embeddings], dim=1)
        src = image_embedding.expand(b, -1, -1, -1, -1) + dense_embedding
        _, c, d, h, w = src.shape
        hs, keys = self.transformer(src, image_pe, tokens)

        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(b, c, d, h, w))
        _, cu, du, hu, wu = upscaled.shape
        flat = upscaled.reshape(b, cu, du * hu * wu)
        hyper = self.output_hypernetworks_mlps[0](hs[:, 1, :]).unsqueeze(1)  # mask token 0
        masks = hyper @ flat  # (B, 1, d4*h4*w4)
        if text_embedding is not None:
            sim = self.txt_align_upscaled_embedding(text_embedding).unsqueeze(1) @ flat
            masks = masks + sim if text_mask is None else torch.where(text_mask.view(b, 1, 1), masks + sim, masks)
        return masks.reshape(b, 1, du, hu, wu)
