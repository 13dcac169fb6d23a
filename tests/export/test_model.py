"""The PyTorch SegVol: official parameter names, the official quirks, the
token formulation of the prompt decoder, and CLIP against transformers.

Faithfulness to the official code as a whole (MONAI ViT, SAM modules,
transformers CLIP) was checked outside the repository; these tests pin the
pieces that check covered."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys

import pytest
import torch

from segvol_rt.errors import SegVolError
from segvol_rt.export.model.segvol import SegVol, prompt_tokens
from segvol_rt.io.config import SegVolConfig
from segvol_rt.io.spec import LABEL_BOX_MAX, LABEL_BOX_MIN, LABEL_PAD, LABEL_TEXT

# sha256 of "key shape" lines (sorted) of the official SegVol built from the
# official code (MONAI ViT, SAM modules, transformers CLIPTextModel), without
# the CLIP position_ids buffer.
OFFICIAL_KEYS_SHA256 = "ad5f0ca17e444d0eb626960d0c6dc04ed163263e4df2c81b587f2f0d21e881f9"
OFFICIAL_KEY_COUNT = 474


def key_digest(state: dict) -> str:
    lines = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sorted(state.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.fixture
def prompts(tiny_config):
    D, H, W = tiny_config.spatial_size
    g = torch.Generator().manual_seed(7)
    boxes = torch.tensor([[2.0, 5, 7, D // 2, H // 2, W - 5], [1.0, 0, 3, D - 2, H - 9, W // 3]])
    coords = torch.stack([torch.randint(0, s, (2, 4), generator=g) for s in (D, H, W)], -1).float()
    labels = torch.tensor([[1.0, 0, -1, 1], [0.0, 1, 1, -1]])
    return boxes, (coords, labels)


def test_official_state_dict_keys_and_shapes():
    with torch.device("meta"):
        state = SegVol(SegVolConfig.official()).state_dict()
    assert len(state) == OFFICIAL_KEY_COUNT
    assert key_digest(state) == OFFICIAL_KEYS_SHA256
    assert tuple(state["image_encoder.patch_embedding.position_embeddings"].shape) == (1, 2048, 768)
    assert tuple(state["image_encoder.patch_embedding.patch_embeddings.1.weight"].shape) == (768, 1024)
    assert "image_encoder.blocks.0.attn.qkv.bias" not in state
    assert tuple(state["mask_decoder.txt_align_upscaled_embedding.weight"].shape) == (96, 768)
    assert tuple(state["mask_decoder.output_upscaling.1.weight"].shape) == (192, 16, 32, 32)
    assert tuple(state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape) == (3, 384)
    assert tuple(state["text_encoder.dim_align.weight"].shape) == (768, 512)
    assert "text_encoder.clip_text_model.text_model.embeddings.position_ids" not in state


def test_shapes(tiny_model, tiny_config, prompts):
    B = 2
    D, H, W = tiny_config.spatial_size
    with torch.no_grad():
        emb = tiny_model.encode_image(torch.rand(B, 1, D, H, W))
        txt = tiny_model.encode_text(torch.full((B, 77), tiny_config.text.pad_token_id))
        low = tiny_model.decode_low_res(emb, txt, *prompts)
        full = tiny_model.forward_decoder(emb, txt, *prompts)
    assert emb.shape == (B, tiny_config.embed_dim, *tiny_config.grid_size)
    assert txt.shape == (B, tiny_config.embed_dim)
    assert low.shape == (B, 1, *tiny_config.low_res_size)
    assert full.shape == (B, 1, D, H, W)
    assert torch.isfinite(full).all()


def test_patch_embedding_is_monai_linear_over_flattened_patches(tiny_model, tiny_config):
    """MONAI flattens patches as 'b c (h p1) (w p2) (d p3) -> b (h w d) (p1 p2 p3 c)'."""
    pe = tiny_model.image_encoder.patch_embedding
    image = torch.rand(2, 1, *tiny_config.spatial_size)
    (gd, gh, gw), (pd, ph, pw) = tiny_config.grid_size, tiny_config.patch_size
    x = image.reshape(2, 1, gd, pd, gh, ph, gw, pw).permute(0, 2, 4, 6, 3, 5, 7, 1)
    expected = pe.patch_embeddings[1](x.reshape(2, gd * gh * gw, -1)) + pe.position_embeddings
    with torch.no_grad():
        assert rel_err(pe(image), expected) < 1e-5


def test_vit_attention_qkv_layout_matches_multihead_attention(tiny_model, tiny_config):
    """qkv output features are (3, heads, head_dim): torch's in_proj layout."""
    attn = tiny_model.image_encoder.blocks[0].attn
    C = tiny_config.embed_dim
    mha = torch.nn.MultiheadAttention(C, tiny_config.encoder_heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.zero_()
        mha.out_proj.load_state_dict(attn.out_proj.state_dict())
        x = torch.randn(2, 10, C)
        assert rel_err(attn(x), mha(x, x, x, need_weights=False)[0]) < 1e-5


def test_point_encoding_reproduces_official_normalisation(tiny_model, tiny_config):
    """+0.5 shift; component 0 / H, 1 / D, 2 / W; PE = [sin, cos](2 pi (2c - 1) G)."""
    D, H, W = tiny_config.spatial_size
    enc = tiny_model.prompt_encoder
    coords = torch.tensor([[[3.0, 10.0, 50.0]]])
    unit = torch.tensor([3.5 / H, 10.5 / D, 50.5 / W])
    proj = 2 * math.pi * ((2 * unit - 1) @ enc.pe_layer.positional_encoding_gaussian_matrix)
    expected = torch.cat([proj.sin(), proj.cos()])
    assert rel_err(enc.encode_coords(coords)[0, 0], expected) < 1e-6


def test_dense_pe_puts_h_position_first(tiny_model, tiny_config):
    enc = tiny_model.prompt_encoder
    d, h, w = tiny_config.grid_size
    pe = enc.dense_pe()
    assert pe.shape == (1, tiny_config.embed_dim, d, h, w)
    i, j, k = 1, 2, 3
    unit = torch.tensor([(j + 0.5) / h, (i + 0.5) / d, (k + 0.5) / w])
    assert rel_err(pe[0, :, i, j, k], enc.pe_layer.encode(unit)) < 1e-6


def test_token_embeddings_follow_official_rules(tiny_model, tiny_config):
    enc = tiny_model.prompt_encoder
    C = tiny_config.embed_dim
    coords = torch.rand(1, 6, 3) * 10
    labels = torch.tensor([[1, 0, LABEL_PAD, LABEL_BOX_MIN, LABEL_BOX_MAX, LABEL_TEXT]])
    text = torch.randn(1, C)
    tokens = enc.embed_tokens(coords, labels, text)[0]
    pe = enc.encode_coords(coords)[0]
    pts = [e.weight[0] for e in enc.point_embeddings]
    assert torch.equal(tokens[0], pe[0] + pts[1])
    assert torch.equal(tokens[1], pe[1] + pts[0])
    assert torch.equal(tokens[2], enc.not_a_point_embed.weight[0])
    assert torch.equal(tokens[3], pe[3] + pts[2])
    assert torch.equal(tokens[4], pe[4] + pts[3])
    assert torch.equal(tokens[5], text[0])


def test_prompt_tokens_official_order_and_padding():
    box = torch.tensor([[1.0, 2, 3, 4, 5, 6]])
    pts = (torch.tensor([[[7.0, 8, 9]]]), torch.tensor([[1.0]]))
    text = torch.zeros(1, 4)
    _, labels = prompt_tokens(1, points=pts)
    assert labels.tolist() == [[1, LABEL_PAD]]  # pad point only without a box
    coords, labels = prompt_tokens(1, text, box, pts)
    assert labels.tolist() == [[1, LABEL_BOX_MIN, LABEL_BOX_MAX, LABEL_TEXT]]
    assert coords[0, :3].tolist() == [[7, 8, 9], [1, 2, 3], [4, 5, 6]]
    assert prompt_tokens(1, text)[1].tolist() == [[LABEL_TEXT]]
    assert prompt_tokens(3)[1].shape == (3, 0)


def test_text_term_is_per_row_and_image_batch_broadcasts(tiny_model, tiny_config, prompts):
    """Row 0 with text, row 1 without, in one call == two separate calls;
    a (1, ...) image embedding serves every row."""
    boxes, _ = prompts
    D, H, W = tiny_config.spatial_size
    with torch.no_grad():
        emb = tiny_model.encode_image(torch.rand(1, 1, D, H, W))
        text = torch.randn(2, tiny_config.embed_dim)
        c0, l0 = prompt_tokens(1, text[:1], boxes[:1])
        c1, l1 = prompt_tokens(1, None, boxes[1:])
        pad = torch.tensor([[[0.0, 0, 0]]]), torch.tensor([[LABEL_PAD]])
        # Row 1 gets a trailing pad token so both rows have 3 tokens; compare it with the same tokens alone.
        coords = torch.cat([c0, torch.cat([c1, pad[0]], 1)])
        labels = torch.cat([l0, torch.cat([l1, pad[1]], 1)])
        both = tiny_model.decode_tokens(emb, coords, labels, torch.stack([text[0], torch.zeros_like(text[0])]))
        row0 = tiny_model.decode_low_res(emb, text[:1], boxes[:1])
        row1 = tiny_model.decode_tokens(emb, coords[1:], labels[1:], torch.zeros(1, tiny_config.embed_dim))
        no_text = tiny_model.decode_low_res(emb, None, boxes[:1])
    assert rel_err(both[0], row0[0]) < 1e-5
    assert rel_err(both[1], row1[0]) < 1e-5
    assert rel_err(no_text, row0) > 1e-3  # the text term matters


def test_prompts_change_the_output(tiny_model, tiny_config, prompts):
    boxes, points = prompts
    with torch.no_grad():
        emb = tiny_model.encode_image(torch.rand(2, 1, *tiny_config.spatial_size))
        a = tiny_model.decode_low_res(emb, boxes=boxes)
        b = tiny_model.decode_low_res(emb, boxes=boxes, points=points)
        c = tiny_model.decode_low_res(emb, boxes=boxes[:, None])
    assert rel_err(a, b) > 1e-3
    assert torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(boxes=torch.zeros(2, 4)), "boxes must be"),
        (dict(points=(torch.zeros(2, 3, 3), torch.full((2, 3), 2.0))), "point labels"),
        (dict(points=(torch.zeros(2, 3), torch.zeros(2, 3))), "points must be"),
        (dict(boxes=torch.zeros(3, 6)), "batch"),
        (dict(text_embedding=torch.zeros(2, 5)), "text_embedding"),
    ],
)
def test_bad_prompts_are_user_errors(tiny_model, tiny_config, kwargs, match):
    emb = torch.zeros(2, tiny_config.embed_dim, *tiny_config.grid_size)
    with pytest.raises(SegVolError, match=match):
        tiny_model.decode_low_res(emb, **kwargs)


def test_forward_equals_encode_then_decode(tiny_model, tiny_config, prompts):
    boxes, points = prompts
    image = torch.rand(2, 1, *tiny_config.spatial_size)
    with torch.no_grad():
        full = tiny_model(image, None, boxes, points)
        low = tiny_model.decode_low_res(tiny_model.encode_image(image), None, boxes, points)
    expected = torch.nn.functional.interpolate(low, size=tiny_config.spatial_size, mode="trilinear", align_corners=False)
    assert torch.equal(full, expected)


# -- CLIP text tower ---------------------------------------------------------
def _hf_clip(tiny_model, tiny_config, eos_token_id):
    transformers = pytest.importorskip("transformers")
    t = tiny_config.text
    cfg = transformers.CLIPTextConfig(
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        intermediate_size=t.intermediate_size,
        max_position_embeddings=t.max_length,
        layer_norm_eps=t.layer_norm_eps,
        eos_token_id=eos_token_id,
    )
    hf = transformers.CLIPTextModel(cfg).eval()
    missing, unexpected = hf.load_state_dict(tiny_model.text_encoder.clip_text_model.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    return hf


@pytest.mark.parametrize("eos_token_id", [2, 49407], ids=["legacy-argmax", "eos-id"])
def test_clip_matches_transformers_with_padding_true(tiny_model, tiny_config, eos_token_id):
    """transformers on a padding=True batch (with attention mask) == ours on fixed-length ids."""
    hf = _hf_clip(tiny_model, tiny_config, eos_token_id)
    t = tiny_config.text
    bodies = [[320, 1125, 539, 6851], [320, 1125, 539, 1234, 5678, 9012, 3456]]
    seqs = [[t.bos_token_id, *b, t.eos_token_id] for b in bodies]
    n = max(map(len, seqs))
    ids = torch.tensor([s + [t.pad_token_id] * (n - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in seqs])
    fixed = torch.tensor([s + [t.pad_token_id] * (t.max_length - len(s)) for s in seqs])
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).pooler_output
        ours = tiny_model.text_encoder.clip_text_model(fixed)
    assert rel_err(ours, expected) < 1e-5


def test_text_pooling_ignores_tokens_after_first_eos(tiny_model, tiny_config):
    t = tiny_config.text
    ids = torch.full((2, t.max_length), t.pad_token_id)
    ids[:, :4] = torch.tensor([t.bos_token_id, 320, 1125, t.eos_token_id])
    ids[1, 4:] = 77  # junk after the end-of-text token
    with torch.no_grad():
        out = tiny_model.encode_text(ids)
    assert torch.equal(out[0], out[1])


def test_model_code_imports_no_export_code():
    code = (
        "import sys, segvol_rt.export.model.segvol;"
        "print([m for m in sys.modules if m in ('onnx', 'onnxruntime', 'transformers', 'segvol_rt.export.checkpoint')"
        " or m.startswith('segvol_rt.export.onnx')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
