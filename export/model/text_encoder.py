"""SegVol's text encoder: the CLIP text transformer (ViT-B/32 text tower for
the official model) pooled at the end-of-text token, then a Linear to the
SegVol embedding size.

Our own implementation; submodule names reproduce the keys of transformers'
``CLIPTextModel`` under ``clip_text_model.text_model.*`` and ``dim_align``.

Pooling. The official model runs ``CLIPTextModel(CLIPTextConfig())``, whose
default ``eos_token_id`` is 2, which makes transformers pool at
``input_ids.argmax(-1)``. CLIP's ``<|endoftext|>`` (49407) is the largest id
of the vocabulary and ``torch.argmax`` returns the first maximum, so that is
the first ``<|endoftext|>``. We pool at the first occurrence of
``config.text.eos_token_id``, computed as a min over
``where(ids == eos, position, L)`` (export-friendly). Attention is causal, so
tokens after the end-of-text token (padding, whatever its id) never change
the pooled output: a fixed-length (B, 77) input padded with the pad id gives
the official ``padding=True`` result.
"""

from __future__ import annotations

import torch
from torch import nn

from segvol_rt.io.config import SegVolConfig, TextConfig


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_length, cfg.hidden_size)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.01)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        return self.token_embedding(token_ids) + self.position_embedding(positions).unsqueeze(0)


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention; q is scaled before the product (as CLIP)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.head_dim = dim // cfg.num_heads
        self.scale = self.head_dim**-0.5
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self._heads(self.q_proj(x) * self.scale)
        k = self._heads(self.k_proj(x))
        v = self._heads(self.v_proj(x))
        scores = q @ k.transpose(-2, -1)  # (B, heads, L, L)
        pos = torch.arange(n, device=x.device)
        future = pos.unsqueeze(0) > pos.unsqueeze(1)  # key after query
        scores = scores.masked_fill(future, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class CLIPMLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-norm: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPTextTransformer(nn.Module):
    """(B, L) token ids -> pooled (B, hidden) at the first end-of-text token."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.eos_token_id = cfg.eos_token_id
        self.embeddings = CLIPEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.final_layer_norm(self.encoder(self.embeddings(token_ids)))
        return pool_at_first(hidden, token_ids, self.eos_token_id)


def pool_at_first(hidden: torch.Tensor, token_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """hidden (B, L, C) at the first position where ``token_ids == token_id``,
    or at the last position when a row has none -> (B, C)."""
    length = token_ids.shape[1]
    pos = torch.arange(length, device=token_ids.device).expand_as(token_ids)
    first = torch.where(token_ids == token_id, pos, torch.full_like(pos, length - 1)).amin(dim=1)
    index = first.view(-1, 1, 1).expand(-1, 1, hidden.shape[2])
    return hidden.gather(1, index)[:, 0]  # not squeeze(1): its ONNX If has branches of unequal rank (TensorRT rejects)


class CLIPTextModel(nn.Module):
    """Holds ``text_model`` so keys read ``clip_text_model.text_model.*``."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.text_model = CLIPTextTransformer(cfg)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.text_model(token_ids)


class TextEncoder(nn.Module):
    """(B, L) int64 CLIP token ids -> text embedding (B, C)."""

    def __init__(self, config: SegVolConfig):
        super().__init__()
        self.clip_text_model = CLIPTextModel(config.text)
        self.dim_align = nn.Linear(config.text.hidden_size, config.embed_dim)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.dim_align(self.clip_text_model(token_ids))

