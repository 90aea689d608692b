"""What a step's rollouts looked like: reward spread over groups, lengths, truncation."""
from __future__ import annotations

from typing import Any

import torch

from ..sharding import strategy
from ..types import Completion
from .episodes import episode_metrics


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


def step_metrics(seen: Any, seen_rewards: torch.Tensor, group: int, dt: float, t_gen: float, *, lr: float,
                 accelerator: Any, guide: Any = None) -> dict[str, Any]:
    """A step's logged metrics: reward statistics over every group sampled this step
    (`seen`: rollout.dynamic_sampling.Groups; `seen_rewards`: all processes'), lengths,
    throughput, episode counters, timed-out reward calls, guidance counters."""
    out: dict[str, Any] = {
        **rollout_stats(seen_rewards, group, seen.completions),
        "step_time_s": dt,
        "generation_time_s": t_gen,
        "lr": lr,
        "world_size": accelerator.num_processes,
        "strategy": strategy(accelerator),
    }
    out["tokens_per_s"] = out.pop("completion_tokens") / dt
    out.update(episode_metrics(seen.completions))
    if len(seen.raw) > 1:
        out.update({f"rewards/{k}": sum(v) / len(v) for k, v in seen.raw.items()})
    out["rewards/timeouts"] = int(seen.timeouts)
    if guide is not None:
        out.update(guide.step_metrics(seen.problems, seen.rewards, group, accelerator.num_processes))
    return out
