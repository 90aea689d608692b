"""One-token rollout (OTR): supervised targets trained as token-level policy gradient.

OTR (Ming, Wu et al. 2025, arXiv 2509.26313) treats each position t of a supervised
target y* as a one-step RL problem. From the logits z_t of one teacher-forced forward pass
it samples K candidate tokens a_t^k ~ softmax(z_t / tau) (no gradient through sampling),
rewards them R(a) = 1 if a == y*_t else beta, and maximises the REINFORCE objective

    L = -(1/T) sum_t (1/K) sum_k R(a_t^k) log pi(a_t^k | s_t),     pi = softmax(z_t)

with the untempered policy. The ground-truth token is not forced into the samples.

Because the K samples only enter through how often each token was drawn, the sum is a
weighted cross-entropy with weights w_t(v) = count_t(v) / K * R(v): one gather over the
drawn tokens, so OTR costs about what SFT does (the samples come from logits already
computed, not from extra generation). The closed-form variant replaces the counts by their
expectation, w_t(v) = pi'_t(v) R(v) with pi' the tempered distribution (lower variance; at
tau = 1 its gradient is (1 - beta) pi(y*) grad log pi(y*), the DFT objective).

Shapes: logits [N, V] over the N target positions of a batch, targets [N].
"""
from __future__ import annotations

import torch


def otr_loss(logits: torch.Tensor, targets: torch.Tensor, *, num_samples: int = 256,
             temperature: float = 1.0, beta: float = -0.1, closed_form: bool = False,
             generator: torch.Generator | None = None,
             samples: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over positions of -sum_v w(v) log pi(v). `samples` [N, K] fixes the draws (tests)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # untempered policy, with gradient
    with torch.no_grad():
        tempered = torch.softmax(logits.float() / temperature, dim=-1)
        if closed_form:
            weights = tempered.clone()
        else:
            if samples is None:
                samples = torch.multinomial(tempered, num_samples, replacement=True,
                                            generator=generator)
            weights = torch.zeros_like(logp).scatter_add_(
                -1, samples, torch.full(samples.shape, 1.0 / samples.size(-1), device=logp.device))
        reward = torch.full_like(logp, beta)
        reward.scatter_(-1, targets[:, None], 1.0)
        mean_reward = (weights * reward).sum(-1).mean()  # of the sampled candidates
        weights = weights * reward
    loss = -(weights * logp).sum(-1).mean()
    with torch.no_grad():
        p = logp.exp()
        metrics = {
            "reward": float(mean_reward),
            "gt_prob": float(p.gather(-1, targets[:, None]).mean()),
            "entropy": float(-(p * logp).sum(-1).mean()),
        }
    return loss, metrics


def sft_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Plain cross-entropy over the same positions, with the same metrics (the baseline)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    loss = -logp.gather(-1, targets[:, None]).mean()
    with torch.no_grad():
        p = logp.exp()
        metrics = {"gt_prob": float(p.gather(-1, targets[:, None]).mean()),
                   "entropy": float(-(p * logp).sum(-1).mean())}
    return loss, metrics
