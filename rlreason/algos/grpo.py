"""GRPO and its variants (Dr. GRPO, DAPO, GSPO) as tensor functions.

Shapes: B sequences (prompt groups laid out contiguously, G per group), T completion
positions. `mask` [B,T] is 1 on trained completion tokens (never prompt or hint tokens).

The variants differ in three places, each a parameter rather than a subclass:
  * advantage scaling: (R - mean) / std per group (GRPO), per batch, or none (Dr. GRPO)
    (advantages.py, with the other estimators);
  * importance ratio: per token (GRPO, DAPO) or per sequence, exp(mean_t log r) (GSPO);
  * aggregation of token terms: per-sequence mean then mean (grpo), token mean over the
    micro-batch (bnpo), token mean over the whole step's batch (dapo), token sum divided by
    B * max_completion_length (dr_grpo), per-sequence term then mean (gspo).
With gradient accumulation each micro-batch's loss is divided by the normaliser of the
whole step, so summed micro-batch gradients equal the gradient of the full batch.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1, k2, k3)."""
    log_ratio = ref_logp - logp  # log(pi_ref / pi)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.exp(log_ratio) - log_ratio - 1
    raise ValueError(f"algo.kl_estimator: {estimator!r}; expected k1, k2 or k3")


@dataclass
class LossInputs:
    """Everything a policy loss sees for one micro-batch.

    logp, old_logp, mask: [B,T]; ref_logp: [B,T] or None; advantages: [B].
    num_sequences / num_tokens: totals over the whole optimizer step (all micro-batches),
    used as normalisers; num_micro_batches for bnpo's per-micro-batch mean.
    """

    logp: torch.Tensor
    old_logp: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    ref_logp: torch.Tensor | None = None
    is_weights: torch.Tensor | None = None  # [B,T] truncated importance weights (sampler)
    num_sequences: int = 0
    num_tokens: int = 0
    num_micro_batches: int = 1
    max_completion_length: int = 0


LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
LOSSES: dict[str, LossFn] = {}
# How each loss normalises, which is all the trainer needs to know about it:
#   "step": a share of a step-level total (x.num_tokens, x.num_sequences, a fixed length):
#     DDP's gradient average is undone by scaling each rank's loss by the world size, and a
#     sequence with advantage 0 (and no KL) adds exactly nothing, so it may be skipped;
#   "micro_batch": a mean over each micro-batch (bnpo): neither holds.
NORMALIZERS = ("step", "micro_batch")
LOSS_NORMALIZER: dict[str, str] = {}


def register_loss(name: str, *, normalizer: str = "step"):
    """Add a policy loss `fn(x: LossInputs, cfg) -> (loss, metrics)`, usable at once as
    `algo.loss_type: name` (the config validates against this registry)."""
    if normalizer not in NORMALIZERS:
        raise ValueError(f"register_loss({name!r}): normalizer {normalizer!r}; expected one of {NORMALIZERS}")

    def deco(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        LOSS_NORMALIZER[name] = normalizer
        return fn

    return deco


def _clipped_terms(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float):
    """-min(r A, clip(r, 1-eps_low, 1+eps_high) A) and masks of where clipping bound."""
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    low = (ratio < 1 - eps_low) & (adv < 0)
    high = (ratio > 1 + eps_high) & (adv > 0)
    return loss, low, high


def _metrics(x: LossInputs, ratio, low, high, kl) -> dict[str, float]:
    m = x.mask.bool()
    if ratio.dim() == 1:  # sequence-level ratio
        m_seq = m.any(-1)
        n = m_seq.sum().clamp(min=1)
        out = {"clip_low": (low & m_seq).sum() / n, "clip_high": (high & m_seq).sum() / n,
               "ratio": (ratio * m_seq).sum() / n}
    else:
        n = m.sum().clamp(min=1)
        out = {"clip_low": (low & m).sum() / n, "clip_high": (high & m).sum() / n,
               "ratio": (ratio * m).sum() / n}
    if kl is not None:
        out["kl"] = (kl * x.mask).sum() / x.mask.sum().clamp(min=1)
    return {k: float(v) for k, v in out.items()}


def _token_loss(x: LossInputs, cfg):
    """Per-token clipped surrogate (+ beta * KL): [B,T], plus metrics."""
    ratio = torch.exp(x.logp - x.old_logp)
    eps_high = cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon
    per_tok, low, high = _clipped_terms(ratio, x.advantages[:, None], cfg.epsilon, eps_high)
    if x.is_weights is not None:
        per_tok = per_tok * x.is_weights
    kl = None
    if cfg.beta > 0 and x.ref_logp is not None:
        kl = kl_penalty(x.logp, x.ref_logp, cfg.kl_estimator)
        per_tok = per_tok + cfg.beta * kl
    return per_tok, _metrics(x, ratio.detach(), low, high, None if kl is None else kl.detach())


@register_loss("grpo")
def grpo_loss(x: LossInputs, cfg):
    per_tok, m = _token_loss(x, cfg)
    seq = (per_tok * x.mask).sum(-1) / x.mask.sum(-1).clamp(min=1)
    return seq.sum() / x.num_sequences, m


@register_loss("bnpo", normalizer="micro_batch")
def bnpo_loss(x: LossInputs, cfg):
    per_tok, m = _token_loss(x, cfg)
    return (per_tok * x.mask).sum() / x.mask.sum().clamp(min=1) / x.num_micro_batches, m


@register_loss("dapo")
def dapo_loss(x: LossInputs, cfg):
    per_tok, m = _token_loss(x, cfg)
    return (per_tok * x.mask).sum() / max(x.num_tokens, 1), m


@register_loss("dr_grpo")
def dr_grpo_loss(x: LossInputs, cfg):
    per_tok, m = _token_loss(x, cfg)
    return (per_tok * x.mask).sum() / (x.num_sequences * x.max_completion_length), m


@register_loss("gspo")
def gspo_loss(x: LossInputs, cfg):
    """Sequence ratio s = exp(mean_t log(pi/pi_old)), clipped per sequence (GSPO)."""
    n_tok = x.mask.sum(-1).clamp(min=1)
    log_s = ((x.logp - x.old_logp) * x.mask).sum(-1) / n_tok
    ratio = torch.exp(log_s)
    eps_high = cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon
    seq, low, high = _clipped_terms(ratio, x.advantages, cfg.epsilon, eps_high)
    if x.is_weights is not None:
        seq = seq * (x.is_weights * x.mask).sum(-1) / n_tok
    kl = None
    if cfg.beta > 0 and x.ref_logp is not None:
        kl = kl_penalty(x.logp, x.ref_logp, cfg.kl_estimator)
        seq = seq + cfg.beta * (kl * x.mask).sum(-1) / n_tok
    return seq.sum() / x.num_sequences, _metrics(
        x, ratio.detach(), low, high, None if kl is None else kl.detach())


def _kl_term(x: LossInputs, cfg):
    if cfg.beta > 0 and x.ref_logp is not None:
        return kl_penalty(x.logp, x.ref_logp, cfg.kl_estimator)
    return None


@register_loss("cispo")
def cispo_loss(x: LossInputs, cfg):
    """CISPO (MiniMax-M1, arXiv 2506.13585): clip the importance weight, not the update.
    Per token -sg(min(r, 1 + eps_high)) * A * log pi(y_t), a REINFORCE term whose weight is
    a constant: every token keeps a gradient (PPO's clip zeroes those past the bound), only
    its size is capped. No lower bound (the paper sets none); token mean over the step."""
    ratio = torch.exp(x.logp - x.old_logp)
    eps_high = cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon
    weight = torch.clamp(ratio, max=1 + eps_high).detach()
    per_tok = -weight * x.advantages[:, None] * x.logp
    if x.is_weights is not None:
        per_tok = per_tok * x.is_weights
    kl = _kl_term(x, cfg)
    if kl is not None:
        per_tok = per_tok + cfg.beta * kl
    high = (ratio > 1 + eps_high) & (x.advantages[:, None] != 0)
    return (per_tok * x.mask).sum() / max(x.num_tokens, 1), _metrics(
        x, ratio.detach(), torch.zeros_like(high), high, None if kl is None else kl.detach())


@register_loss("sapo")
def sapo_loss(x: LossInputs, cfg):
    """SAPO (arXiv 2511.20347): a smooth gate instead of the hard clip. Per token
    -f(r) * A with f(r) = sigmoid(tau (r - 1)) * 4 / tau, tau = sapo_temperature_pos where
    A > 0 and sapo_temperature_neg where A < 0 (the paper: 1.0 and 1.05, negative updates
    decay faster). f'(1) = 1, so on-policy it is the policy gradient; off-policy the
    gradient fades smoothly instead of stopping at 1 +- eps. Token mean over the step."""
    ratio = torch.exp(x.logp - x.old_logp)
    adv = x.advantages[:, None]
    tau = torch.where(adv > 0, torch.full_like(adv, cfg.sapo_temperature_pos),
                      torch.full_like(adv, cfg.sapo_temperature_neg))
    per_tok = -torch.sigmoid(tau * (ratio - 1)) * (4 / tau) * adv
    if x.is_weights is not None:
        per_tok = per_tok * x.is_weights
    kl = _kl_term(x, cfg)
    if kl is not None:
        per_tok = per_tok + cfg.beta * kl
    none = torch.zeros_like(ratio, dtype=torch.bool)
    return (per_tok * x.mask).sum() / max(x.num_tokens, 1), _metrics(
        x, ratio.detach(), none, none, None if kl is None else kl.detach())


def policy_loss(x: LossInputs, cfg) -> tuple[torch.Tensor, dict[str, float]]:
    """Dispatch on cfg.loss_type through the registry."""
    try:
        fn = LOSSES[cfg.loss_type]
    except KeyError:
        raise ValueError(
            f"algo.loss_type: {cfg.loss_type!r}; expected one of {sorted(LOSSES)}") from None
    return fn(x, cfg)
