"""Train on the highest-entropy completion tokens only ("forking tokens", arXiv 2506.01939):
most tokens of a reasoning trace are near-deterministic; the few where the policy is
uncertain carry the learning signal. TRL names the option `top_entropy_quantile`.
"""
from __future__ import annotations

import torch


def top_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """`mask` [B,T] restricted to tokens whose entropy is at or above the (1 - quantile)
    quantile of the masked tokens' entropies: quantile 0.2 keeps the top 20%, 1.0 all.
    Computed over the tokens given (the trainer passes a micro-batch, as TRL its per-device
    batch)."""
    if quantile >= 1.0:
        return mask
    if not 0.0 < quantile:
        raise ValueError(f"algo.top_entropy_quantile must be in (0, 1], got {quantile}")
    live = entropy[mask.bool()].detach().float()
    if live.numel() == 0:
        return mask
    threshold = torch.quantile(live, 1.0 - quantile)
    return mask * (entropy.detach() >= threshold).to(mask.dtype)
