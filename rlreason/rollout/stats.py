"""What a step's rollouts looked like: reward spread over groups, lengths, truncation."""
from __future__ import annotations

from typing import Any

import torch

from ..types import Completion


def rollout_stats(rewards: torch.Tensor, group: int, completions: list[Completion]) -> dict[str, Any]:
    """`rewards` [B*G] over the global batch (every process's, in group order); the lengths
    of this process's `completions`. `frac_zero_std_groups` is the share of groups whose
    rewards are all equal: they carry no GRPO signal."""
    n_tok = sum(len(c.token_ids) for c in completions)
    return {
        "reward": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "frac_zero_std_groups": float((rewards.view(-1, group).std(dim=1) < 1e-6).float().mean()),
        "completion_length": n_tok / len(completions),
        "completion_tokens": n_tok,
        "frac_truncated": sum(c.finish_reason == "length" for c in completions) / len(completions),
    }
