"""Load the policy, the reference model and the tokenizer.

Real models load with `from_pretrained` (hub id or local folder). The name `tiny` is
resolved to a folder by tiny.resolve_model_path first (the small local Llama, built and
warm-started on first use, then cached), so the quickstart and the tests need no download;
it loads through the same from_pretrained path as a user's model. This module imports no
rollout, data or loop code.
"""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .config import ModelConfig
from .skills import apply_in_memory
from .types import Adapter

# dtype names a recipe may use (model.dtype, rollout.dtype) and the torch dtypes they mean
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(name_or_path: str):
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"model.tokenizer / model.name_or_path: cannot load a tokenizer from "
            f"{name_or_path!r} ({e}); give a local folder or a hub id reachable from here"
        ) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name_or_path: str, cfg: ModelConfig):
    kwargs = {}
    if cfg.dtype != "auto":
        kwargs["dtype"] = TORCH_DTYPES[cfg.dtype]
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"model.name_or_path: cannot load {name_or_path!r} ({e}); give a local folder "
            f"with config.json and weights, or a hub id reachable from here"
        ) from e


def apply_lora(model, cfg: ModelConfig):
    """Wrap `model` with fresh peft LoRA adapters; only adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model  # lazily: peft is heavy, needed only with model.lora.enabled

    lc = cfg.lora
    peft_cfg = LoraConfig(
        r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
        target_modules=lc.target_modules, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def load_policy(path: str, cfg: ModelConfig, log=print):
    """(policy, tokenizer) from `path` (a hub id or folder: tiny.resolve_model_path's answer).
    LoRA-wrapped when cfg.lora.enabled."""
    tok = load_tokenizer(cfg.tokenizer or path)
    model = load_causal_lm(path, cfg)
    for spec in cfg.skills:  # PaST: theta + lambda * v, in memory (before any LoRA wrapping)
        n = apply_in_memory(model, spec.path, spec.scale, spec.modules)
        log(f"skill vector {spec.path} x {spec.scale} applied to {n} tensors")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if cfg.lora.enabled:
        model = apply_lora(model, cfg)
    return model, tok


def load_reference(path: str, cfg: ModelConfig):
    """A frozen copy of the starting policy (not needed for LoRA: disable the adapter)."""
    ref = load_causal_lm(path, cfg)
    ref.requires_grad_(False)
    return ref.eval()


def lora_adapter(policy, state_dict: dict[str, torch.Tensor]) -> Adapter:
    """The policy's LoRA adapter as an in-memory `Adapter` for an engine (no merge, no file):
    its config and its tensors, picked from `state_dict` (whole, gathered from shards)."""
    from peft import get_peft_model_state_dict  # lazily: LoRA runs only

    return Adapter(policy.peft_config["default"], get_peft_model_state_dict(policy, state_dict=state_dict))
