"""SegVol checkpoints in both published layouts -> one canonical state dict.

Layouts (auto-detected):

* ``pth`` (GitHub release, e.g. ``SegVol_v1.pth``): a ``torch.save`` dict whose
  ``"model"`` entry is the ``DataParallel`` state dict (keys ``module.*``);
  other entries (epoch, optimizer, scheduler) are ignored. An optional
  top-level ``"segvol_rt_config"`` (:meth:`SegVolConfig.to_dict`) describes a
  non-official size.
* ``hf`` (Hugging Face ``BAAI/SegVol``): a directory with ``config.json``,
  ``model.safetensors`` or ``pytorch_model.bin`` (keys ``model.*``) and the
  CLIP tokenizer files. ``config.json`` may carry ``"segvol_rt_config"``.

Canonical keys are :class:`SegVol`'s own. CLIP text keys are accepted nested
(``text_encoder.clip_text_model.text_model.*``, transformers 4.x, with an
``embeddings.position_ids`` buffer that must be 0..L-1 and is dropped) or
flat (``text_encoder.clip_text_model.*``). Matching is strict: any missing,
unexpected or mis-shaped key is a :class:`SegVolError`. Pickles load with
``weights_only=True``, so a checkpoint can never run code.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from segvol_rt.errors import SegVolError
from segvol_rt.export.model.segvol import SegVol
from segvol_rt.io.config import SegVolConfig
from segvol_rt.io.digests import sha256_file

FORMAT_PTH = "pth"
FORMAT_HF = "hf"
CONFIG_KEY = "segvol_rt_config"
HF_CONFIG = "config.json"
# config.json key: axis codes of the voxel order the weights were trained on (the demo model's: RAS); SegVol's has none
VOXEL_ORIENTATION_KEY = "segvol_rt_voxel_orientation"
HF_SAFETENSORS = "model.safetensors"
HF_BIN = "pytorch_model.bin"
HF_WEIGHTS = (HF_SAFETENSORS, HF_BIN)  # in order of preference
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
PTH_PREFIX = "module."
HF_PREFIX = "model."
TEXT_PREFIX = "text_encoder.clip_text_model."
TEXT_MODEL_PREFIX = TEXT_PREFIX + "text_model."
POSITION_IDS = TEXT_MODEL_PREFIX + "embeddings.position_ids"
_SHOW = 5  # keys named per kind of mismatch


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        state_dict: canonical keys (those of :class:`SegVol`), float32 tensors on CPU.
        config: the architecture the weights are for.
        format: ``"pth"`` or ``"hf"``.
        sha256: hex digest of the weights file (for ``hf``, of the weights file
            inside the directory).
        path: the file or directory given.
        tokenizer_dir: the directory holding CLIP tokenizer files, or None.
    """

    state_dict: dict[str, torch.Tensor]
    config: SegVolConfig
    format: str
    sha256: str
    path: Path
    tokenizer_dir: Path | None
    voxel_orientation: str | None = None  # config.json's VOXEL_ORIENTATION_KEY: the voxel order it was trained on


# -- loading -------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a ``.pth`` file or a Hugging Face directory; strict against the config."""
    path = Path(path)
    if not path.exists():
        raise SegVolError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _load_hf(path, _hf_weights_file(path))
    if path.name in HF_WEIGHTS:
        return _load_hf(path.parent, path, given=path)
    return _load_pth(path)


def build_model(path: str | os.PathLike[str]) -> tuple[SegVol, Checkpoint]:
    """A float32 :class:`SegVol` in eval mode holding the checkpoint's weights.

    The model is built on the meta device and takes the checkpoint's tensors
    as its parameters (no random initialisation, no copy)."""
    ckpt = load_checkpoint(path)
    with torch.device("meta"):
        model = SegVol(ckpt.config)
    model.load_state_dict(ckpt.state_dict, strict=True, assign=True)
    return model.float().eval(), ckpt


def _load_pth(path: Path) -> Checkpoint:
    obj = _torch_load(path)
    raw = _pick_state_dict(obj, path)
    config = _config_from_dict(obj.get(CONFIG_KEY), path) if CONFIG_KEY in obj else SegVolConfig.official()
    state = canonical_state_dict(raw, config, path)
    return Checkpoint(state, config, FORMAT_PTH, sha256_file(path), path, None)


def _load_hf(directory: Path, weights: Path, given: Path | None = None) -> Checkpoint:
    config = _hf_config(directory)
    raw: Mapping[str, Any]
    if weights.suffix == ".safetensors":
        raw = _safetensors_load(weights)
    else:
        raw = _pick_state_dict(_torch_load(weights), weights)
    state = canonical_state_dict(raw, config, weights)
    return Checkpoint(state, config, FORMAT_HF, sha256_file(weights), given or directory, _tokenizer_dir(directory),
                      _hf_voxel_orientation(directory))


def _hf_voxel_orientation(directory: Path) -> str | None:
    """config.json's :data:`VOXEL_ORIENTATION_KEY` (axis codes such as RAS), or None when it names none."""
    from segvol_rt.io.artifacts import check_orientation

    file = directory / HF_CONFIG
    if not file.is_file():
        return None
    codes = json.loads(file.read_text(encoding="utf-8")).get(VOXEL_ORIENTATION_KEY)  # parsed by _hf_config already
    return None if codes is None else check_orientation(codes)


def _hf_weights_file(directory: Path) -> Path:
    for name in HF_WEIGHTS:
        if (directory / name).is_file():
            return directory / name
    if any(directory.glob("*.index.json")):
        raise SegVolError(f"{directory}: sharded checkpoints (*.index.json) are not supported; merge the shards first")
    raise SegVolError(f"{directory} holds no SegVol weights ({' or '.join(HF_WEIGHTS)})")


def _hf_config(directory: Path) -> SegVolConfig:
    """``segvol_rt_config`` from config.json; else the official architecture,
    with the window and patch sizes config.json states (SegVol's HF config)."""
    file = directory / HF_CONFIG
    if not file.is_file():
        return SegVolConfig.official()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SegVolError(f"{file} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SegVolError(f"{file} is not a JSON object")
    if CONFIG_KEY in data:
        return _config_from_dict(data[CONFIG_KEY], file)
    sizes: dict[str, Any] = {k: tuple(int(v) for v in data[k]) for k in ("spatial_size", "patch_size") if k in data}
    try:
        return replace(SegVolConfig.official(), **sizes)
    except (TypeError, ValueError) as exc:
        raise SegVolError(f"{file}: bad spatial_size/patch_size ({exc})") from exc


def _config_from_dict(data: Any, source: Path) -> SegVolConfig:
    if not isinstance(data, Mapping):
        raise SegVolError(f"{source}: '{CONFIG_KEY}' is not a mapping")
    try:
        return SegVolConfig.from_dict(dict(data))
    except SegVolError as exc:
        raise SegVolError(f"{source}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise SegVolError(f"{source}: invalid '{CONFIG_KEY}' ({exc})") from exc


def _tokenizer_dir(directory: Path) -> Path | None:
    has = lambda name: (directory / name).is_file()  # noqa: E731
    return directory if has("tokenizer.json") or (has("vocab.json") and has("merges.txt")) else None


def _torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` (memory-mapped when the file is
    a zip archive), every failure turned into a one-line :class:`SegVolError`."""
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols of files it then rejects anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except OSError as exc:
        raise SegVolError(f"cannot read checkpoint {path}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign files
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise SegVolError(
                f"{path} holds Python objects ({found.group(1)}), not just tensors; "
                "it is not loaded because unpickling them could run code"
            ) from exc
        raise SegVolError(f"{path} is not a PyTorch checkpoint ({type(exc).__name__})") from exc


def _safetensors_load(path: Path) -> dict[str, torch.Tensor]:
    from segvol_rt._optional import require

    st = require("safetensors.torch")
    try:
        return st.load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends
        raise SegVolError(f"{path} is not a safetensors file ({exc})") from exc


def _pick_state_dict(obj: Any, path: Path) -> Mapping[str, Any]:
    """The model state dict of a loaded pickle: ``obj["model"]``,
    ``obj["state_dict"]`` or ``obj`` itself when it maps names to tensors."""
    if not isinstance(obj, Mapping):
        raise SegVolError(f"{path} is not a SegVol checkpoint (holds a {type(obj).__name__}, not a dict)")
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    keys = ", ".join(sorted(map(str, obj))[:_SHOW])
    raise SegVolError(f"{path} is not a SegVol checkpoint: no 'model' state dict (top-level keys: {keys})")


# -- key layouts -----------------------------------------------------------------
def canonical_state_dict(raw: Mapping[str, Any], config: SegVolConfig, source: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    """Official-layout state dict -> :class:`SegVol`'s keys, float32; strict.

    Strips a shared ``module.`` / ``model.`` prefix, nests flat CLIP keys under
    ``text_model.``, checks and drops ``position_ids``, then compares keys
    and shapes with ``SegVol(config)``."""
    state: dict[str, torch.Tensor] = {}
    for key, value in _strip_prefixes(dict(raw)).items():
        if not isinstance(value, torch.Tensor):
            raise SegVolError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        if key.startswith(TEXT_PREFIX) and not key.startswith(TEXT_MODEL_PREFIX):
            key = TEXT_MODEL_PREFIX + key[len(TEXT_PREFIX):]
        state[key] = value
    position_ids = state.pop(POSITION_IDS, None)
    if position_ids is not None:
        _check_position_ids(position_ids, source)
    for key, value in state.items():
        if value.is_floating_point() and value.dtype != torch.float32:
            state[key] = value.float()
    check_state_dict(state, config, source)
    return state


def _strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    for prefix in (PTH_PREFIX, HF_PREFIX):
        if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _check_position_ids(position_ids: torch.Tensor, source: Path | str) -> None:
    expected = torch.arange(position_ids.shape[-1] if position_ids.ndim else 0)
    if position_ids.ndim not in (1, 2) or not torch.equal(position_ids.reshape(-1).long(), expected):
        raise SegVolError(f"{source}: {POSITION_IDS} is not 0..L-1; such a CLIP text model is not supported")


def check_state_dict(state: Mapping[str, torch.Tensor], config: SegVolConfig, source: Path | str = "checkpoint") -> None:
    """Raise a :class:`SegVolError` naming missing, unexpected and mis-shaped keys."""
    with torch.device("meta"):
        expected = {k: (tuple(v.shape), v.is_floating_point()) for k, v in SegVol(config).state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {expected[k][0]})"
        for k in expected
        if k in state and (tuple(state[k].shape), state[k].is_floating_point()) != expected[k]
    ]
    problems = [
        f"{len(keys)} {what} ({', '.join(keys[:_SHOW])}{', ...' if len(keys) > _SHOW else ''})"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("with wrong shape or dtype", wrong))
        if keys
    ]
    if problems:
        raise SegVolError(
            f"{source} does not match SegVol (embed_dim {config.embed_dim}, window {config.spatial_size}): "
            + "; ".join(problems)
            + f". For a non-official size, store SegVolConfig.to_dict() as '{CONFIG_KEY}'"
        )


def official_state_dict(model: SegVol) -> dict[str, torch.Tensor]:
    """The model's weights with the released CLIP layout (transformers 4.x
    nesting plus the ``position_ids`` buffer), without a top-level prefix."""
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    state[POSITION_IDS] = torch.arange(model.config.text.max_length, dtype=torch.int64).unsqueeze(0)
    return state


# -- saving --------------------------------------------------------------------
def save_pth(model: SegVol, path: str | os.PathLike[str], extra: Mapping[str, Any] | None = None) -> Path:
    """Write the GitHub layout: ``{"model": {"module.<key>": tensor}, **extra}``,
    plus ``segvol_rt_config`` for a non-official size. Atomic (temp + rename)."""
    path = Path(path)
    payload: dict[str, Any] = dict(extra or {})
    payload["model"] = {PTH_PREFIX + k: v for k, v in official_state_dict(model).items()}
    if model.config != SegVolConfig.official():
        payload[CONFIG_KEY] = model.config.to_dict()
    _atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def save_hf(
    model: SegVol,
    directory: str | os.PathLike[str],
    tokenizer_files: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
    safetensors: bool = True,
    voxel_orientation: str | None = None,
) -> Path:
    """Write the Hugging Face layout into ``directory`` (created if needed):
    ``config.json``, ``model.safetensors`` (or ``pytorch_model.bin``) with
    ``model.<key>`` names, and the tokenizer files, given as a directory (its
    known tokenizer files are copied) or a list of files. ``voxel_orientation``:
    the axis codes of the voxel order the model was trained on, recorded in config.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {HF_PREFIX + k: v for k, v in official_state_dict(model).items()}
    if safetensors:
        from segvol_rt._optional import require

        st = require("safetensors.torch")
        _atomic_write(directory / HF_SAFETENSORS, lambda tmp: st.save_file(state, str(tmp), metadata={"format": "pt"}))
    else:
        _atomic_write(directory / HF_BIN, lambda tmp: torch.save(state, tmp))
    config = {
        "architectures": ["SegVolModel"],
        "model_type": "segvol",
        "spatial_size": list(model.config.spatial_size),
        "patch_size": list(model.config.patch_size),
        "test_mode": True,
    }
    if voxel_orientation is not None:
        from segvol_rt.io.artifacts import check_orientation

        config[VOXEL_ORIENTATION_KEY] = check_orientation(voxel_orientation)
    if model.config != SegVolConfig.official():
        config[CONFIG_KEY] = model.config.to_dict()
    text = json.dumps(config, indent=2) + "\n"
    _atomic_write(directory / HF_CONFIG, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    for file in _tokenizer_sources(tokenizer_files):
        _atomic_write(directory / file.name, functools.partial(shutil.copyfile, file))
    return directory


def _tokenizer_sources(spec: Any) -> list[Path]:
    if spec is None:
        return []
    if isinstance(spec, (str, os.PathLike)) and Path(spec).is_dir():
        return [Path(spec) / n for n in TOKENIZER_FILES if (Path(spec) / n).is_file()]
    files = [Path(spec)] if isinstance(spec, (str, os.PathLike)) else [Path(f) for f in spec]
    for file in files:
        if not file.is_file():
            raise SegVolError(f"tokenizer file not found: {file}")
    return files


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Run ``write(tmp)`` on a hidden temporary path beside ``path``, then
    rename it (the file gets the umask's mode, like a plain ``open``)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


