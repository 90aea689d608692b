"""The RolloutEngine protocol: what the trainer needs from any generator.

Prompt token ids in; per prompt, `n` completions out, each with its sampled token ids,
their sampling log-probabilities and a finish reason. After every optimizer step the
trainer calls `update_weights` (full weights) or `load_adapter` (LoRA) so the next
rollouts are on-policy; `sleep`/`wake` let a GPU engine hand memory back while the
trainer runs. Every backend implements the same contract, so the whole loop is tested
on CPU with the transformers backend.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ..models import lora_adapter
from ..registry import BACKENDS
from ..sharding import gathered_parameters
from ..types import Completion, SamplingParams


@runtime_checkable
class RolloutEngine(Protocol):
    shares_module: bool  # True: samples from the trainer's own module, nothing to push

    def generate(
        self, prompt_token_ids: list[list[int]], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """`n` completions for each prompt, in prompt order."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Make the engine sample from these (full) weights from now on."""
        ...

    def load_adapter(self, adapter: Any) -> None:
        """Make the engine sample with this LoRA adapter (a peft adapter folder or an
        in-memory `types.Adapter`) on the unchanged base weights."""
        ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...

    def rng_state(self) -> Any:
        """Sampling RNG state, saved in checkpoints so resumed runs sample identically."""
        ...

    def set_rng_state(self, state: Any) -> None: ...


@dataclass
class EngineContext:
    """What a backend factory gets beside the recipe's `rollout` section. `model` is the
    trainer's module (shared in-process by the hf backend) or, with `shares_module=False`,
    an inference copy the trainer refreshes; vLLM starts from `model_path`."""

    model: Any
    tokenizer: Any
    model_path: str
    seed: int
    max_prompt_length: int
    lora_rank: int | None = None
    shares_module: bool = True


def make_engine(cfg, model, tokenizer, *, model_path: str, seed: int, max_prompt_length: int,
                lora_rank: int | None = None, shares_module: bool = True) -> RolloutEngine:
    """The engine a recipe's `rollout` section asks for: `rollout.backend` looked up in
    `registry.BACKENDS` (a built-in name or your own `module:factory`)."""
    factory = BACKENDS.get(cfg.backend)
    return factory(cfg, EngineContext(model, tokenizer, model_path, seed, max_prompt_length,
                                      lora_rank, shares_module))


def push_weights(engine: RolloutEngine, model, accelerator, *, lora: bool, version: int | None = None) -> None:
    """Make `engine` sample from `model`'s current weights: the LoRA adapter alone (in
    memory, no merge) or every weight as tensors; gathered from the shards, in bounded
    chunks, where training shards parameters. No process samples before every push is done.
    `version` (the trainer step; asynchronous rollouts) goes to engines that record it."""
    named = gathered_parameters(model, accelerator, trainable_only=lora)
    kw = {} if version is None else {"version": version}
    if lora:
        engine.load_adapter(lora_adapter(accelerator.unwrap_model(model), dict(named)), **kw)
    else:
        engine.update_weights(named, **kw)
    if accelerator.num_processes > 1:
        accelerator.wait_for_everyone()
