"""Advantage estimators: a step's rewards [B*G] (groups of G contiguous) -> advantages [B*G].

One registry, like the losses: `algo.advantage_estimator` names an entry, the config
validates against it, and an estimator of your own is `register_estimator("name")` or
`module:function`. Every estimator sees the whole step's rewards (all processes', in rank
order), so batch statistics are exact under data parallelism.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

EstimatorFn = Callable[..., torch.Tensor]
ESTIMATORS: dict[str, EstimatorFn] = {}


def register_estimator(name: str):
    """Add an estimator `fn(rewards [B*G], group_size, cfg) -> advantages [B*G]`, usable at
    once as `algo.advantage_estimator: name`."""

    def deco(fn: EstimatorFn) -> EstimatorFn:
        ESTIMATORS[name] = fn
        return fn

    return deco


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size).float()


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """A_i = R_i - mean(group), divided by the group std, the batch std, or nothing.

    std is the unbiased one (as TRL); a group whose rewards are all equal gets advantage 0
    and no gradient.
    """
    r = _groups(rewards, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        adv = adv / (rewards.float().std() + eps)
    elif scale != "none":
        raise ValueError(f"algo.scale_rewards: {scale!r}; expected group, batch or none")
    return adv.reshape(-1)


@register_estimator("grpo")
def grpo_advantages(rewards: torch.Tensor, group_size: int, cfg) -> torch.Tensor:
    """GRPO's group baseline, scaled by `algo.scale_rewards` (group std, batch std, none)."""
    return group_advantages(rewards, group_size, cfg.scale_rewards)


@register_estimator("rloo")
def rloo_advantages(rewards: torch.Tensor, group_size: int, cfg) -> torch.Tensor:
    """RLOO: R_i minus the mean of the *other* G-1 rewards of its group (an unbiased
    baseline: it does not depend on sample i). Equals G/(G-1) (R_i - group mean); unscaled."""
    if group_size < 2:
        raise ValueError("algo.advantage_estimator=rloo needs algo.num_generations >= 2")
    r = _groups(rewards, group_size)
    others = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)
    return (r - others).reshape(-1)


@register_estimator("reinforce_pp")
def reinforce_pp_advantages(rewards: torch.Tensor, group_size: int, cfg, eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++ with baseline: R_i minus its group mean, then whitened over the whole
    batch (minus the batch mean of those, divided by their std): the batch, not the group,
    sets the scale, so a group with a small spread is not blown up."""
    r = _groups(rewards, group_size)
    centred = (r - r.mean(dim=1, keepdim=True)).reshape(-1)
    return (centred - centred.mean()) / (centred.std() + eps)
