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
    def generate(
        self, prompt_token_ids: list[list[int]], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """`n` completions for each prompt, in prompt order."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Make the engine sample from these (full) weights from now on."""
        ...

    def load_adapter(self, adapter: Any) -> None:
        """Make the engine sample with this LoRA adapter (folder or named tensors)."""
        ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...

    def rng_state(self) -> Any:
        """Sampling RNG state, saved in checkpoints so resumed runs sample identically."""
        ...

    def set_rng_state(self, state: Any) -> None: ...


def make_engine(backend: str, model, tokenizer, *, batch_size: int, seed: int, **kwargs):
    """Build the engine a recipe asks for."""
    if backend == "hf":
        from .hf import HFEngine

        return HFEngine(model, tokenizer, batch_size=batch_size, seed=seed)
    if backend == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise RuntimeError(
                "rollout.backend: vllm is not installed; `pip install \"rlreason[gpu]\"` "
                "(GPU) or use rollout.backend=hf"
            ) from e
        raise NotImplementedError("rollout.backend=vllm: the vLLM engine is not built yet")
    raise ValueError(f"rollout.backend: unknown backend {backend!r}; expected hf or vllm")
