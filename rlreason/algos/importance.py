"""Truncated importance weights for the sampler/trainer mismatch (pure tensor math)."""
from __future__ import annotations

import torch


def truncated_importance_weights(old: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor,
                                 mode: str, cap: float) -> tuple[torch.Tensor | None, dict[str, float]]:
    """min(pi_trainer / pi_sampler, cap) per token (`mode` token) or per sequence (the
    product over its tokens, `sequence`), and mismatch metrics; `none`: metrics only.

    The sampler (vLLM: other kernels, maybe another dtype) and the trainer disagree a little
    on log-probs; the loss is an expectation under the trainer's policy, so samples are
    reweighted by the ratio, truncated at `cap` to bound the variance.
    old, sampler, mask [B,T]: the trainer's log-probs of the sampled tokens before this
    step's update, the sampler's, and which tokens count.
    """
    delta = (old.detach() - sampler.to(old.device)) * mask  # log(pi_trainer / pi_sampler)
    n = mask.sum().clamp(min=1)
    metrics = {"logprob_diff_mean": float(delta.abs().sum() / n),
               "logprob_diff_max": float(delta.abs().max())}
    if mode == "none":
        return None, metrics
    log_w = delta if mode == "token" else delta.sum(-1, keepdim=True).expand_as(delta)
    w = torch.exp(log_w).clamp(max=cap) * mask
    metrics["is_weight_mean"] = float(w.sum() / n)
    return w, metrics
