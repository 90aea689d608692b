"""`rlreason plan`: will this recipe fit? A per-GPU memory estimate before anything loads.

The estimate counts what dominates: weights, gradients and AdamW state of the trainable
parameters (sharded by ZeRO/FSDP as the strategy says), activations of one micro-batch,
and the colocated vLLM engine's share (`rollout.vllm_gpu_memory_utilization` of the card,
which must hold its own copy of the weights plus the KV cache of one rollout batch).
Users' most common failure elsewhere is an OOM beside vLLM, so that is checked explicitly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

GiB = 1024**3
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}


@dataclass
class Shape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool

    @property
    def params(self) -> int:
        attn = self.hidden * self.heads * self.head_dim * 2 + 2 * self.hidden * self.kv_heads * self.head_dim
        mlp = 3 * self.hidden * self.intermediate
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return embed + self.layers * (attn + mlp + 2 * self.hidden) + self.hidden

    def lora_params(self, r: int) -> int:  # all-linear adapters: r x (in + out) per matrix
        d = self.head_dim
        per_layer = (r * (self.hidden + self.heads * d) * 2 + r * (self.hidden + self.kv_heads * d) * 2
                     + r * (self.hidden + self.intermediate) * 3)
        return self.layers * per_layer


def model_shape(cfg: dict[str, Any]) -> Shape:
    heads = cfg["num_attention_heads"]
    return Shape(vocab=cfg["vocab_size"], hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
                 heads=heads, kv_heads=cfg.get("num_key_value_heads") or heads,
                 head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
                 intermediate=cfg["intermediate_size"], tied=bool(cfg.get("tie_word_embeddings")))


def load_model_config(name_or_path: str) -> dict[str, Any]:
    local = Path(name_or_path) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    try:
        from transformers import AutoConfig  # lazily: heavy; `rlreason plan` on a local folder never needs it

        return AutoConfig.from_pretrained(name_or_path).to_dict()
    except (OSError, ValueError) as e:
        raise ValueError(f"model.name_or_path: no config for {name_or_path!r} ({e}); "
                         f"give a local folder with config.json") from e


def launch_layout(path: str) -> tuple[str, int]:
    """(strategy, GPUs) an accelerate launch config describes: what `rlreason plan
    --accelerate-config` estimates for, so the plan matches the launch."""
    try:
        c = yaml.safe_load(open(path)) or {}
    except OSError as e:
        raise FileNotFoundError(f"--accelerate-config {path}: {e.strerror}") from e
    kind = c.get("distributed_type", "MULTI_GPU")
    if kind == "DEEPSPEED":
        stage = int((c.get("deepspeed_config") or {}).get("zero_stage", 2))
        if stage not in (2, 3):
            raise ValueError(f"--accelerate-config {path}: zero_stage {stage}; plan knows ZeRO-2 and ZeRO-3")
        strategy = f"zero{stage}"
    elif kind == "FSDP":
        strategy = "fsdp2"
    elif kind in ("MULTI_GPU", "NO"):
        strategy = "ddp"
    else:
        raise ValueError(f"--accelerate-config {path}: distributed_type {kind!r}; "
                         "expected MULTI_GPU, FSDP or DEEPSPEED")
    return strategy, int(c.get("num_processes", 1))


def estimate(cfg, gpus: int, gpu_gib: float, strategy: str) -> dict[str, Any]:
    """Bytes per GPU by component (GiB) and whether it fits; strategy: ddp|zero2|zero3|fsdp2."""
    if cfg.model.name_or_path == "tiny":
        t = cfg.model.tiny
        mc = {"vocab_size": 100, "hidden_size": t.hidden_size, "num_hidden_layers": t.num_layers,
              "num_attention_heads": t.num_heads, "intermediate_size": t.intermediate_size,
              "tie_word_embeddings": True}
    else:
        mc = load_model_config(cfg.model.name_or_path)
    s = model_shape(mc)
    n = s.params
    w_bytes = _BYTES[cfg.model.dtype]
    trainable = s.lora_params(cfg.model.lora.r) if cfg.model.lora.enabled else n
    shard_states = strategy in ("zero2", "zero3", "fsdp2")
    shard_weights = strategy in ("zero3", "fsdp2")
    weights = n * w_bytes / (gpus if shard_weights else 1)
    grads = trainable * 4 / (gpus if shard_states else 1)  # fp32 gradients
    optim = trainable * 8 / (gpus if shard_states else 1)  # AdamW: two fp32 moments
    seq = cfg.data.max_prompt_length + cfg.rollout.max_completion_length
    # bytes of saved activations per token and layer: ~34 h without recomputation
    # (Korthikanti et al. 2022, 16-bit), the layer input (2 h) with gradient checkpointing
    per_token = s.hidden * s.layers * (2 if cfg.model.gradient_checkpointing else 34)
    activations = cfg.train.micro_batch_size * seq * per_token
    logits = cfg.train.micro_batch_size * cfg.rollout.max_completion_length * s.vocab * 4 * 2
    out: dict[str, Any] = {"params": n, "trainable": trainable, "strategy": strategy, "gpus": gpus,
                           "gib": {"weights": weights / GiB, "gradients": grads / GiB,
                                   "optimizer": optim / GiB, "activations": (activations + logits) / GiB}}
    if cfg.rollout.backend == "hf" and shard_weights:  # the transformers backend's whole copy
        out["gib"]["rollout_copy"] = n * w_bytes / GiB
    if cfg.rollout.backend == "vllm":
        seqs = cfg.train.prompts_per_step * cfg.algo.num_generations / gpus
        kv = 2 * s.layers * s.kv_heads * s.head_dim * 2 * seq * seqs  # bf16 K and V
        out["gib"]["vllm_weights"] = n * 2 / GiB
        out["gib"]["vllm_kv_needed"] = kv / GiB
        out["vllm_reserved_gib"] = cfg.rollout.vllm_gpu_memory_utilization * gpu_gib
    trainer = sum(v for k, v in out["gib"].items() if not k.startswith("vllm"))
    vllm = out.get("vllm_reserved_gib", 0.0)
    out["total_gib"] = trainer + vllm
    warnings = []
    if out["total_gib"] > gpu_gib:
        warnings.append(f"needs ~{out['total_gib']:.1f} GiB per GPU, the card has {gpu_gib:.0f}: shard more "
                        f"(zero3/fsdp2), use LoRA, gradient checkpointing, a smaller micro_batch_size, or a "
                        f"lower rollout.vllm_gpu_memory_utilization")
    if "vllm_reserved_gib" in out:
        need = out["gib"]["vllm_weights"] + out["gib"]["vllm_kv_needed"]
        if need > out["vllm_reserved_gib"]:
            warnings.append(f"vLLM needs ~{need:.1f} GiB (weights + KV cache of one rollout batch) but "
                            f"rollout.vllm_gpu_memory_utilization gives it {out['vllm_reserved_gib']:.1f} GiB")
    out["warnings"] = warnings
    out["fits"] = not warnings
    return out


def format_plan(p: dict[str, Any]) -> str:
    lines = [f"{p['params'] / 1e9:.2f}B parameters ({p['trainable'] / 1e6:.1f}M trainable), "
             f"{p['strategy']} on {p['gpus']} GPU(s); per GPU:"]
    lines += [f"  {k:<16} {v:8.2f} GiB" for k, v in p["gib"].items()]
    if "vllm_reserved_gib" in p:
        lines.append(f"  {'vllm reserved':<16} {p['vllm_reserved_gib']:8.2f} GiB")
    lines.append(f"  {'total':<16} {p['total_gib']:8.2f} GiB")
    lines += [f"WARNING: {w}" for w in p["warnings"]]
    return "\n".join(lines)
