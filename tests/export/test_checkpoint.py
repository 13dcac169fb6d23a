"""Checkpoint loading: both released layouts, both CLIP key layouts, strict
matching, and clean failures on anything that is not a SegVol checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from segvol_rt.errors import SegVolError
from segvol_rt.export.checkpoint import (
    CONFIG_KEY,
    POSITION_IDS,
    build_model,
    load_checkpoint,
    official_state_dict,
    save_hf,
    save_pth,
)
from segvol_rt.export.model.segvol import SegVol
from segvol_rt.io.config import SegVolConfig

TEXT_KEY = "text_encoder.clip_text_model.text_model.final_layer_norm.weight"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_weights(model: SegVol, state: dict) -> None:
    expected = model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def write_pth(path: Path, state: dict, config: SegVolConfig | None = None, prefix: str = "module.") -> Path:
    payload = {"model": {prefix + k: v for k, v in state.items()}, "epoch": 3}
    if config is not None:
        payload[CONFIG_KEY] = config.to_dict()
    torch.save(payload, path)
    return path


# -- both layouts ---------------------------------------------------------------
def test_pth_layout(tiny_pth, tiny_model, tiny_config):
    raw = torch.load(tiny_pth, weights_only=True)
    assert all(k.startswith("module.") for k in raw["model"]) and raw["epoch"] == 0
    assert torch.equal(raw["model"]["module." + POSITION_IDS], torch.arange(77)[None])
    ckpt = load_checkpoint(tiny_pth)
    assert (ckpt.format, ckpt.config, ckpt.path, ckpt.tokenizer_dir) == ("pth", tiny_config, tiny_pth, None)
    assert ckpt.sha256 == sha256(tiny_pth)
    assert_same_weights(tiny_model, ckpt.state_dict)


def test_hf_layout(tiny_hf_dir, tiny_model, tiny_config):
    from safetensors.torch import load_file

    weights = tiny_hf_dir / "model.safetensors"
    assert all(k.startswith("model.") for k in load_file(weights))
    assert json.loads((tiny_hf_dir / "config.json").read_text())["spatial_size"] == list(tiny_config.spatial_size)
    ckpt = load_checkpoint(tiny_hf_dir)
    assert (ckpt.format, ckpt.config, ckpt.path) == ("hf", tiny_config, tiny_hf_dir)
    assert ckpt.sha256 == sha256(weights)
    has_tokenizer = (tiny_hf_dir / "tokenizer.json").is_file()
    assert ckpt.tokenizer_dir == (tiny_hf_dir if has_tokenizer else None)
    assert_same_weights(tiny_model, ckpt.state_dict)


def test_hf_pytorch_bin_and_weights_file_path(tmp_path, tiny_model, tiny_config):
    directory = save_hf(tiny_model, tmp_path / "hf", safetensors=False)
    weights = directory / "pytorch_model.bin"
    for path in (directory, weights):
        ckpt = load_checkpoint(path)
        assert (ckpt.format, ckpt.config, ckpt.sha256) == ("hf", tiny_config, sha256(weights))
        assert_same_weights(tiny_model, ckpt.state_dict)


def test_hf_tokenizer_files_from_list(tmp_path, tiny_model):
    vocab, merges = tmp_path / "vocab.json", tmp_path / "merges.txt"
    vocab.write_text("{}")
    merges.write_text("#version: 0.2\n")
    directory = save_hf(tiny_model, tmp_path / "hf", tokenizer_files=[vocab, merges])
    assert load_checkpoint(directory).tokenizer_dir == directory
    with pytest.raises(SegVolError, match="tokenizer file not found"):
        save_hf(tiny_model, tmp_path / "hf2", tokenizer_files=[tmp_path / "nope.json"])


def test_build_model(tiny_hf_dir, tiny_model, tiny_config):
    model, ckpt = build_model(tiny_hf_dir)
    assert not model.training
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in model.state_dict().values())
    image = torch.rand(1, 1, *tiny_config.spatial_size)
    box = torch.tensor([[1.0, 2, 3, 10, 40, 50]])
    with torch.no_grad():
        assert torch.equal(model(image, boxes=box), tiny_model(image, boxes=box))


# -- key layouts ----------------------------------------------------------------
def test_flat_clip_layout_without_position_ids(tmp_path, tiny_model, tiny_config):
    state = {
        k.replace("clip_text_model.text_model.", "clip_text_model."): v
        for k, v in official_state_dict(tiny_model).items()
        if k != POSITION_IDS
    }
    assert "text_encoder.clip_text_model.final_layer_norm.weight" in state
    ckpt = load_checkpoint(write_pth(tmp_path / "flat.pth", state, tiny_config))
    assert_same_weights(tiny_model, ckpt.state_dict)


def test_hf_prefix_in_a_pth_and_half_precision(tmp_path, tiny_model, tiny_config):
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in official_state_dict(tiny_model).items()}
    ckpt = load_checkpoint(write_pth(tmp_path / "half.pth", state, tiny_config, prefix="model."))
    assert ckpt.state_dict[TEXT_KEY].dtype == torch.float32
    assert torch.equal(ckpt.state_dict[TEXT_KEY], tiny_model.state_dict()[TEXT_KEY].half().float())


def test_bad_position_ids(tmp_path, tiny_model, tiny_config):
    state = official_state_dict(tiny_model)
    state[POSITION_IDS] = torch.arange(77).flip(0)[None]
    with pytest.raises(SegVolError, match="position_ids"):
        load_checkpoint(write_pth(tmp_path / "pos.pth", state, tiny_config))


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_strict_keys(tmp_path, tiny_model, tiny_config, change):
    state = official_state_dict(tiny_model)
    key = "mask_decoder.iou_token.weight"
    if change == "missing":
        del state[key]
    elif change == "unexpected":
        state["mask_decoder.extra.weight"] = torch.zeros(1)
        key = "mask_decoder.extra.weight"
    else:
        state[key] = torch.zeros(2, tiny_config.embed_dim)
    words = {"missing": "missing", "unexpected": "unexpected", "shape": "with wrong shape"}[change]
    with pytest.raises(SegVolError, match=f"1 {words}.*{key}") as info:
        load_checkpoint(write_pth(tmp_path / "bad.pth", state, tiny_config))
    assert "\n" not in str(info.value)


def test_official_config_is_the_default(tmp_path, tiny_model, tiny_hf_dir):
    """Without segvol_rt_config the official architecture is assumed, so tiny
    weights are reported as a mismatch (with a hint), not loaded."""
    with pytest.raises(SegVolError, match=r"\d+ with wrong shape.*segvol_rt_config"):
        load_checkpoint(write_pth(tmp_path / "noconf.pth", official_state_dict(tiny_model)))
    copy = shutil.copytree(tiny_hf_dir, tmp_path / "hf")
    config = json.loads((copy / "config.json").read_text())
    del config[CONFIG_KEY]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(SegVolError, match="does not match SegVol"):
        load_checkpoint(copy)


# -- not checkpoints ------------------------------------------------------------
class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def _write(path: Path, kind: str) -> Path:
    if kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "text":
        path.write_text("not a checkpoint\n" * 20)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "hello")
    elif kind == "plain-pickle":
        path.write_bytes(pickle.dumps({"a": 1}))
    elif kind == "list":
        torch.save([torch.zeros(1)], path)
    elif kind == "no-model":
        torch.save({"epoch": 1, "note": "x"}, path)
    return path


@pytest.mark.parametrize("kind", ["random", "text", "empty", "zip", "plain-pickle", "list", "no-model"])
def test_not_a_checkpoint(tmp_path, kind):
    with pytest.raises(SegVolError, match="not a"):
        load_checkpoint(_write(tmp_path / f"{kind}.pth", kind))


def test_pickled_code_is_never_run(tmp_path, capsys):
    path = tmp_path / "code.pth"
    torch.save({"model": {"a": torch.zeros(1)}, "hook": _RunsCode()}, path)
    with pytest.raises(SegVolError, match="could run code"):
        load_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out


def test_missing_paths_and_bad_directories(tmp_path, tiny_hf_dir):
    with pytest.raises(SegVolError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(SegVolError, match="holds no SegVol weights"):
        load_checkpoint(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(SegVolError, match="sharded"):
        load_checkpoint(tmp_path)
    broken = shutil.copytree(tiny_hf_dir, tmp_path / "broken")
    (broken / "config.json").write_text("{not json")
    with pytest.raises(SegVolError, match="not valid JSON"):
        load_checkpoint(broken)
    (broken / "config.json").write_text(json.dumps({CONFIG_KEY: {"embed_dim": 32, "bogus": 1}}))
    with pytest.raises(SegVolError, match="bogus"):
        load_checkpoint(broken)
    (broken / "config.json").unlink()
    (broken / "model.safetensors").write_bytes(os.urandom(256))
    with pytest.raises(SegVolError, match="not a safetensors file"):
        load_checkpoint(broken)


def test_save_is_atomic_and_keeps_extra(tmp_path, tiny_model):
    path = save_pth(tiny_model, tmp_path / "m.pth", extra={"epoch": 7})
    assert sorted(os.listdir(tmp_path)) == ["m.pth"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 7 and CONFIG_KEY in raw


# -- full size ------------------------------------------------------------------
@pytest.mark.slow
def test_official_size_checkpoint_roundtrip(tmp_path):
    """Official config, random weights, written in the GitHub layout, loaded strictly."""
    model = SegVol.random(SegVolConfig.official(), seed=0)
    path = save_pth(model, tmp_path / "SegVol_v1.pth", extra={"epoch": 1, "optimizer": {"state": {}, "param_groups": []}})
    raw = torch.load(path, weights_only=True, mmap=True)
    assert CONFIG_KEY not in raw and len(raw["model"]) == 475  # 474 + position_ids
    loaded, ckpt = build_model(path)
    assert ckpt.config == SegVolConfig.official() and ckpt.format == "pth"
    for key in ("image_encoder.patch_embedding.position_embeddings", TEXT_KEY, "mask_decoder.output_upscaling.1.weight"):
        assert torch.equal(loaded.state_dict()[key], model.state_dict()[key])
    ids = torch.full((1, 77), 49407)
    ids[0, :3] = torch.tensor([49406, 320, 49407])
    with torch.no_grad():
        emb = torch.randn(1, 768, 8, 16, 16)
        txt = loaded.encode_text(ids)
        out = loaded.decode_low_res(emb, txt, torch.tensor([[2.0, 30, 40, 20, 200, 220]]))
    assert out.shape == (1, 1, 32, 64, 64) and torch.isfinite(out).all()
