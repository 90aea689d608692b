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
from typing import Any, Protocol, runtime_checkable

import torch

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


def make_engine(cfg, model, tokenizer, *, model_path: str, seed: int, max_prompt_length: int,
                lora_rank: int | None = None, shares_module: bool = True):
    """The engine a recipe's `rollout` section asks for. `model` is the trainer's module
    (shared in-process by the hf backend) or, with `shares_module=False`, an inference copy
    the trainer refreshes; vLLM starts from `model_path`."""
    if cfg.backend == "hf":
        from .hf import HFEngine

        return HFEngine(model, tokenizer, batch_size=cfg.batch_size, seed=seed,
                        shares_module=shares_module)
    if cfg.backend == "vllm":
        from .vllm import VLLMEngine

        return VLLMEngine(
            model_path, tokenizer, seed=seed,
            max_model_len=cfg.vllm_max_model_len or max_prompt_length + cfg.max_completion_length,
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, dtype=cfg.vllm_dtype,
            enable_lora=lora_rank is not None, max_lora_rank=lora_rank or 16,
            sleep_mode=cfg.vllm_sleep_mode, tensor_parallel_size=cfg.vllm_tensor_parallel_size,
        )
    if cfg.backend == "server":
        from .remote import RemoteEngine

        return RemoteEngine(cfg.server_url, tokenizer, seed=seed, timeout_s=cfg.server_timeout_s,
                            transfer_host=cfg.server_transfer_host, api_key=cfg.server_api_key)
    raise ValueError(f"rollout.backend: unknown backend {cfg.backend!r}; expected hf, vllm or server")
