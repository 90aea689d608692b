"""Load the policy, the reference model and the tokenizer; build the tiny local model.

Real models load with `from_pretrained` (hub id or local folder). The name `tiny` builds a
small Llama from a config with a character tokenizer made locally and warm-starts it with
a short supervised pass on the synthetic task, so the quickstart and the tests need no
download and GRPO starts from a non-zero reward. The warm-started model is cached on disk
(keyed by everything that shapes it) and reloaded with from_pretrained, exactly as a user
model would be.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
import tempfile
from pathlib import Path

import torch

from .config import ModelConfig, ReasoningGymConfig, SyntheticConfig

RGTask = tuple[str, ReasoningGymConfig]  # (data.source 'reasoning_gym:<task>', data.reasoning_gym)

TINY_FORMAT_VERSION = 1  # bump when the tiny model or its warm-start changes meaning

# dtype names a recipe may use (model.dtype, rollout.dtype) and the torch dtypes they mean
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def char_tokenizer():
    """A character-level tokenizer over printable ASCII, built without any download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for c in string.printable:
        if c not in "\r\x0b\x0c":
            vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>",
    )


def tiny_llama(tokenizer, num_layers: int, hidden_size: int, intermediate_size: int,
               num_heads: int, seed: int, max_positions: int = 512):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_heads, max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def cache_root() -> Path:
    return Path(os.environ.get("RLREASON_CACHE", Path.home() / ".cache" / "rlreason"))


def warmstart_synthetic(cfg: ModelConfig, synth: SyntheticConfig) -> SyntheticConfig:
    """The synthetic data the tiny model is warm-started on: the training data's, with the
    tiny config's overrides (a guided-exploration run warm-starts on easy problems only)."""
    try:
        return SyntheticConfig.model_validate({**synth.model_dump(), **cfg.tiny.warmstart_data})
    except ValueError as e:
        raise ValueError(f"model.tiny.warmstart_data: {e}") from e


def tiny_model_path(cfg: ModelConfig, synth: SyntheticConfig, rg: RGTask | None = None) -> Path:
    """Cache folder of the warm-started tiny model: a hash of everything that shapes it."""
    if rg is not None:  # warm-started on the reasoning-gym task the run trains on
        task: dict = {"reasoning_gym": rg[0], "config": rg[1].config}
    else:
        ws = warmstart_synthetic(cfg, synth)
        task = {"task": ws.task, "difficulty": ws.difficulty, "min_difficulty": ws.min_difficulty,
                **({"carries": ws.carries} if ws.carries != "any" else {}),
                **({"operator": ws.operator} if ws.operator != "+" else {})}
    key = json.dumps(
        {"v": TINY_FORMAT_VERSION, "tiny": cfg.tiny.model_dump(exclude={"warmstart_data"}), **task},
        sort_keys=True, default=str,
    )
    return cache_root() / f"tiny-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def accuracy_probe(model, tokenizer, problems, seed: int):
    """A function returning the model's sampled (temperature 1) exact-match accuracy on
    `problems` as it is now; the same sampling seed at every call, so two calls differ
    only by what the model learned in between."""
    from .rollout.hf import HFEngine
    from .types import SamplingParams

    engine = HFEngine(model, tokenizer, seed=seed)
    prompts = [tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in problems]
    sampling = SamplingParams(temperature=1.0, max_tokens=max(len(p.answer) for p in problems) + 1)

    def probe() -> float:
        engine.generator.manual_seed(seed)
        groups = engine.generate(prompts, 1, sampling)
        right = sum(tokenizer.decode(g[0].token_ids, skip_special_tokens=True).strip() == p.answer
                    for g, p in zip(groups, problems))
        return right / len(problems)

    return probe


def warmstart_problems(cfg: ModelConfig, synth: SyntheticConfig, rg: RGTask | None, n: int,
                       probe: bool = False):
    """The tiny model's warm-start problems (or its accuracy probe's): the synthetic task's,
    or the reasoning-gym task's, drawn with the tiny model's seed, apart from the run's splits."""
    seed = cfg.tiny.seed
    if rg is not None:
        from .data.reasoning_gym import reasoning_gym_problems, task_of

        return reasoning_gym_problems(task_of(rg[0]), n, seed=seed + (7 if probe else 0),
                                      config=rg[1].config, split="warmstart")
    from .data.synthetic import synthetic_problems

    ws = warmstart_synthetic(cfg, synth)
    return synthetic_problems(ws.task, n, ws.difficulty, seed=seed, min_difficulty=ws.min_difficulty,
                              split="warmstart-probe" if probe else "warmstart", carries=ws.carries,
                              allow_fewer=True, operator=ws.operator)


def build_tiny_model(cfg: ModelConfig, synth: SyntheticConfig, path: Path, log=print,
                     rg: RGTask | None = None) -> Path:
    """Build, warm-start and save the tiny model at `path` (atomically); return `path`."""
    from .sft import supervised_warmstart

    t = cfg.tiny
    tok = char_tokenizer()
    model = tiny_llama(tok, t.num_layers, t.hidden_size, t.intermediate_size, t.num_heads, t.seed)
    if t.warmstart_steps:
        pairs = [(p.prompt, p.solution)
                 for p in warmstart_problems(cfg, synth, rg, max(4 * t.warmstart_batch_size, 4096))]
        target = t.warmstart_target_accuracy
        probe = None
        if target is not None:
            probe = accuracy_probe(model, tok, warmstart_problems(cfg, synth, rg, 256, probe=True),
                                   seed=t.seed)
        log("warm-starting the tiny model: "
            + (f"until sampled accuracy {target:.2f} (at most {t.warmstart_steps} steps)"
               if target is not None else f"{t.warmstart_steps} supervised steps")
            + f" (cached in {path})")
        supervised_warmstart(model, tok, pairs, steps=t.warmstart_steps,
                             batch_size=t.warmstart_batch_size, lr=t.warmstart_lr, seed=t.seed,
                             probe=probe, target=target, check_every=t.warmstart_check_every, log=log)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, path)
    except OSError:  # another process won the race: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def resolve_model_path(cfg: ModelConfig, synth: SyntheticConfig, log=print, rg: RGTask | None = None) -> str:
    """The path or hub id to load; builds the tiny model on first use (warm-started on the
    synthetic task, or on `rg` = (data.source, data.reasoning_gym) for a reasoning-gym run)."""
    if cfg.name_or_path != "tiny":
        return cfg.name_or_path
    path = tiny_model_path(cfg, synth, rg)
    if not (path / "config.json").is_file():
        build_tiny_model(cfg, synth, path, log=log, rg=rg)
    return str(path)


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

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
    from transformers import AutoModelForCausalLM

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
    from peft import LoraConfig, get_peft_model

    lc = cfg.lora
    peft_cfg = LoraConfig(
        r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
        target_modules=lc.target_modules, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def load_policy(cfg: ModelConfig, synth: SyntheticConfig, log=print, rg: RGTask | None = None):
    """(policy, tokenizer, resolved path). LoRA-wrapped when cfg.lora.enabled."""
    path = resolve_model_path(cfg, synth, log=log, rg=rg)
    tok = load_tokenizer(cfg.tokenizer or path)
    model = load_causal_lm(path, cfg)
    for spec in cfg.skills:  # PaST: theta + lambda * v, in memory (before any LoRA wrapping)
        from .skills import apply_in_memory

        n = apply_in_memory(model, spec.path, spec.scale, spec.modules)
        log(f"skill vector {spec.path} x {spec.scale} applied to {n} tensors")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if cfg.lora.enabled:
        model = apply_lora(model, cfg)
    return model, tok, path


def load_reference(path: str, cfg: ModelConfig):
    """A frozen copy of the starting policy (not needed for LoRA: disable the adapter)."""
    ref = load_causal_lm(path, cfg)
    ref.requires_grad_(False)
    return ref.eval()
