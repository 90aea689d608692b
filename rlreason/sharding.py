"""What the RL loop needs from sharded training (FSDP, DeepSpeed ZeRO), on top of accelerate.

Rollouts need whole tensors (a vLLM push, the transformers backend's inference copy) while
FSDP and ZeRO-3 keep a shard of every parameter per rank; the trainer's own micro-batch
accumulation must tell DeepSpeed where an optimizer step ends; a DeepSpeed config must
agree with the recipe. Everything else (wrapping, sharded optimizer state, checkpoint
files) is accelerate's and the engines' own. The gathering helpers are collectives: every
rank calls them in the same order, and tensors come out one bounded chunk at a time.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from transformers.integrations import unset_hf_deepspeed_config

_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def strategy(acc) -> str:
    """'single', 'ddp', 'fsdp1', 'fsdp2', 'zero1', 'zero2' or 'zero3'."""
    kind = str(getattr(acc.distributed_type, "value", acc.distributed_type)).upper()
    if kind == "DEEPSPEED":
        return f"zero{acc.state.deepspeed_plugin.zero_stage}"
    if kind == "FSDP":
        return "fsdp2" if getattr(acc, "is_fsdp2", False) else "fsdp1"
    return "ddp" if acc.num_processes > 1 else "single"


def shards_parameters(acc) -> bool:
    """True where no rank holds whole parameters between forwards (FSDP, ZeRO-3)."""
    return strategy(acc) in ("fsdp1", "fsdp2", "zero3")


def native_checkpoint(acc) -> bool:
    """True where optimizer state (ZeRO, FSDP) or weights live in per-rank shards, so
    checkpoints go through accelerate's save_state/load_state rather than whole files."""
    return strategy(acc) in ("fsdp1", "fsdp2", "zero1", "zero2", "zero3")


def clean_name(name: str) -> str:
    for p in _WRAPPER_PREFIXES:
        name = name.replace(p, "")
    return name


def gathered_parameters(model, acc, *, trainable_only: bool = False,
                        chunk_bytes: int = 1 << 28) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole tensor) for every parameter of the (prepared) model, names as the
    unwrapped model has them. Sharded strategies gather: FSDP2 one parameter at a time
    (DTensor.full_tensor), ZeRO-3 in chunks of about `chunk_bytes`, FSDP1 the whole model
    at once (summon_full_params). Yielded tensors are detached; under ZeRO-3 and FSDP1 they
    are copies, since the gathered storage is released when the chunk is done."""
    kind = strategy(acc)
    module = acc.unwrap_model(model)
    if kind == "zero3":
        yield from _gather_zero3(module, trainable_only, chunk_bytes)
        return
    ctx: Any = contextlib.nullcontext()
    if kind == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP  # lazily: heavy, FSDP1 runs only

        ctx = FSDP.summon_full_params(model, writeback=False)
        module = model
    with ctx:
        for name, p in module.named_parameters():
            if trainable_only and not p.requires_grad:
                continue
            t = p.detach()
            if hasattr(t, "full_tensor"):  # a DTensor shard (FSDP2)
                t = t.full_tensor()
            elif kind == "fsdp1":
                t = t.clone()
            yield clean_name(name), t


def _gather_zero3(module, trainable_only: bool, chunk_bytes: int):
    import deepspeed  # lazily: DeepSpeed is optional (the gpu extra) and heavy

    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad or not trainable_only]
    chunk: list[tuple[str, torch.Tensor]] = []
    size = 0
    for i, (name, p) in enumerate(named):
        chunk.append((name, p))
        size += getattr(p, "ds_numel", p.numel()) * p.element_size()
        if size >= chunk_bytes or i == len(named) - 1:
            with deepspeed.zero.GatheredParameters([q for _, q in chunk], modifier_rank=None):
                for n, q in chunk:
                    yield clean_name(n), q.detach().clone()
            chunk, size = [], 0


@contextlib.contextmanager
def whole_weights_at_load(acc):
    """Load models whole on every rank unless the DeepSpeed config asks for ZeRO-3's
    partitioned loading (zero3_init_flag). accelerate registers its DeepSpeed config with
    transformers for any ZeRO-3 run, and from_pretrained then partitions at load whatever
    the flag says; the flag is honoured here, so the rollout copy can be made."""
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if plugin is None or plugin.zero_stage != 3 or plugin.is_zero3_init_enabled():
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def inference_copy(model, acc, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A whole, unsharded copy of the (not yet prepared) policy for the transformers
    rollout backend when training shards parameters, or samples in another dtype
    (rollout.dtype); the trainer refreshes it through `gathered_parameters` before every
    rollout. Parameters materialised lazily (meta
    tensors, ZeRO-3 partitions) cannot be copied: the error says which setting to turn off."""
    for name, p in model.named_parameters():
        if p.is_meta or hasattr(p, "ds_id"):
            raise ValueError(
                f"rollout.backend=hf with sharded training needs the whole model on every rank "
                f"at load time ({name} is {'a ZeRO-3 partition' if hasattr(p, 'ds_id') else 'on meta'}): "
                "set zero3_init_flag: false (DeepSpeed) or fsdp_cpu_ram_efficient_loading: false (FSDP) "
                "in the accelerate config, or use rollout.backend=vllm")
    twin = copy.deepcopy(model).to(acc.device, dtype=dtype)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin.eval()


def check_deepspeed_config(acc, cfg) -> None:
    """The DeepSpeed config must agree with the recipe; fill its 'auto' fields from it.

    The trainer accumulates micro-batches inside one optimizer step itself and marks the
    last one (`accumulation_boundary`), so DeepSpeed's own accumulation stays at 1; the
    clipping norm is the recipe's; a micro batch size is needed because no dataloader is
    prepared."""
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    where = "the DeepSpeed config (deepspeed_config in the accelerate config, or its json)"
    gas = ds.get("gradient_accumulation_steps", "auto")
    if gas not in ("auto", 1):
        raise ValueError(f"{where}: gradient_accumulation_steps={gas}; expected 1 (rlreason accumulates "
                         f"train.micro_batch_size={cfg.train.micro_batch_size} micro-batches itself)")
    ds["gradient_accumulation_steps"] = 1
    clip = ds.get("gradient_clipping", "auto")
    if clip != "auto" and abs(float(clip) - cfg.train.max_grad_norm) > 1e-9:
        raise ValueError(f"{where}: gradient_clipping={clip} but train.max_grad_norm="
                         f"{cfg.train.max_grad_norm}; make them equal or set gradient_clipping: auto")
    ds["gradient_clipping"] = cfg.train.max_grad_norm
    mb = ds.get("train_micro_batch_size_per_gpu", "auto")
    if mb not in ("auto", cfg.train.micro_batch_size):
        raise ValueError(f"{where}: train_micro_batch_size_per_gpu={mb} but train.micro_batch_size="
                         f"{cfg.train.micro_batch_size}; make them equal or set it to auto")
    ds["train_micro_batch_size_per_gpu"] = cfg.train.micro_batch_size
    ds["train_batch_size"] = cfg.train.micro_batch_size * acc.num_processes


def reduce_in_float32(acc) -> None:
    """FSDP2 with bf16: keep bf16 compute but reduce (and store) gradients in float32.

    accelerate's default policy reduces in the compute dtype; with frozen and trainable
    parameters side by side (LoRA) torch then assigns a bf16 gradient to a float32 shard
    and stops (measured: torch 2.11, accelerate 1.15, H100). Float32 reduction is also
    what policy-gradient losses of small magnitude want."""
    plugin = getattr(acc.state, "fsdp_plugin", None)
    policy = getattr(plugin, "mixed_precision_policy", None)
    if strategy(acc) != "fsdp2" or policy is None or getattr(policy, "reduce_dtype", None) in (None, torch.float32):
        return
    plugin.mixed_precision_policy = dataclasses.replace(policy, reduce_dtype=torch.float32)


@contextlib.contextmanager
def accumulation_boundary(acc, model, is_last: bool):
    """One micro-batch of an optimizer step: gradients are synchronised (DDP, FSDP) or the
    DeepSpeed step runs only on the last one. DeepSpeed reads accelerate's sync flag in
    `backward` (there is no public setter; accumulate() would also rescale the loss, which
    rlreason already normalises by whole-step counts)."""
    if strategy(acc).startswith("zero"):
        acc.gradient_state._set_sync_gradients(is_last)
        try:
            yield
        finally:
            acc.gradient_state._set_sync_gradients(True)
    elif is_last:
        yield
    else:
        with acc.no_sync(model):
            yield


def rank_share(items: list, acc) -> list:
    """This process's slice of the step's prompts: every rank draws the same global batch
    (same seed, same cursor) and keeps its contiguous share, so groups stay on one rank."""
    W, r = acc.num_processes, acc.process_index
    k = len(items) // W
    return items[r * k : (r + 1) * k]


def gather_cpu(t: torch.Tensor, acc) -> torch.Tensor:
    """`t` from every process, concatenated in rank order, on the CPU (`t` itself with one
    process). A collective: every rank calls it alike."""
    return acc.gather(t.to(acc.device)).cpu() if acc.num_processes > 1 else t
