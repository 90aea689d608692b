"""Load the model to evaluate: a hub id, a folder, a training checkpoint, or base + LoRA adapter.

Training writes `<run>/checkpoints/step_N/model` and `<run>/final`, holding either full
weights or, for LoRA runs, only a peft adapter (adapter_config.json + adapter weights).
Evaluating a checkpoint must not require knowing which: a folder with adapter_config.json
loads its base model (the config's base_model_name_or_path, or `base_model` when given,
for an adapter trained on a local model that has since moved) and applies the adapter.
The adapter is merged into the weights, so decoding costs the same as the base model.

The tokenizer comes from the checkpoint folder when it holds one (training saves it
there), else from the base model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlreason.config import ModelConfig
from rlreason.models import load_causal_lm, load_tokenizer

__all__ = ["LoadedModel", "load_eval_model"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class LoadedModel:
    """The model ready to sample from, its tokenizer, and where each part came from."""

    model: Any
    tokenizer: Any
    base: str
    adapter: str | None
    tokenizer_source: str


def _checkpoint_folder(path: Path) -> Path:
    """A checkpoint step folder holds the model in `model/`: accept the step folder too."""
    if path.is_dir() and not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        inner = path / "model"
        if (inner / "config.json").is_file() or (inner / "adapter_config.json").is_file():
            return inner
    return path


def _adapter_base(adapter: Path, base_model: str | None) -> str:
    if base_model:
        return base_model
    config_file = adapter / "adapter_config.json"
    try:
        base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_file}: cannot read the adapter config ({e})") from None
    if not base:
        raise ValueError(f"{config_file}: no base_model_name_or_path; pass --base-model with the model "
                         "the adapter was trained on")
    return str(base)


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in _TOKENIZER_FILES)


def load_eval_model(model: str, *, adapter: str | None = None, base_model: str | None = None,
                    tokenizer: str | None = None, dtype: str = "auto", device: str | None = None) -> LoadedModel:
    """Load `model` (hub id or folder; a LoRA adapter folder is detected), or `model` + `adapter`.

    dtype: float32 | bfloat16 | float16 | auto (the checkpoint's own). device: default
    cuda when available, else cpu.
    """
    path = _checkpoint_folder(Path(model))
    adapter_dir: Path | None = None
    if adapter is not None:
        adapter_dir = _checkpoint_folder(Path(adapter))
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ValueError(f"--adapter {adapter}: no adapter_config.json in {adapter_dir}; expected a peft LoRA "
                             "adapter folder (a LoRA run's checkpoints/step_N/model or final)")
        base = base_model or model
    elif (path / "adapter_config.json").is_file():
        adapter_dir = path
        base = _adapter_base(path, base_model)
    else:
        if base_model:
            raise ValueError(f"--base-model is for adapters, but {model} holds no adapter_config.json")
        base = str(path) if path.is_dir() else model
    base_path = _checkpoint_folder(Path(base))
    base = str(base_path) if base_path.is_dir() else base

    if tokenizer is None:
        tokenizer = str(adapter_dir) if adapter_dir is not None and _has_tokenizer(adapter_dir) else base
    try:
        tok = load_tokenizer(tokenizer)
        lm = load_causal_lm(base, ModelConfig(name_or_path=base, dtype=dtype))
    except ValueError as e:
        raise ValueError(f"--model {model}: {e}") from e
    if adapter_dir is not None:
        from peft import PeftModel  # lazily: peft is heavy, needed only for adapter folders

        try:
            lm = PeftModel.from_pretrained(lm, str(adapter_dir)).merge_and_unload()
        except (OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"{adapter_dir}: cannot apply the LoRA adapter to {base!r} ({e}); is --base-model "
                             "the model it was trained on?") from e
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = lm.to(device).eval()
    return LoadedModel(model=lm, tokenizer=tok, base=base,
                       adapter=str(adapter_dir) if adapter_dir is not None else None, tokenizer_source=tokenizer)
