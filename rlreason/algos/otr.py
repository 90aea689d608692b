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

Memory: written out, the loss keeps about five [N, V] float32 tensors alive (log-softmax,
tempered softmax, weights, rewards, their products; backward adds more), the largest
allocation of a step at a 150k vocabulary. `otr_loss` is instead one autograd op that
works through the rows in chunks of `chunk_rows` in float32 and saves only the logits
and per-row vectors (log-normaliser, weight sum, the [N, K] draws); backward recomputes
the softmax chunk by chunk and writes the one gradient tensor:

    dL/dz_t = (pi_t * sum_v w_t(v) - w_t) / N

Same values, gradients and (on CPU, where torch.multinomial consumes the generator row by
row) the same draws from the same generator as the plain expression; `tests/test_otr.py`
keeps that expression as the reference. On CUDA the draws have the same distribution but
need not equal one multinomial call over all rows (its kernel ties the random numbers to
the call; not checked here). `benchmarks/otr_memory.py` (2,048 tokens, vocabulary 150k,
forward + backward, CPU): peak 8.0 -> 2.4 GiB sampled, 8.0 -> 2.6 GiB closed form, of which
2.3 GiB are the logits and their gradient.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

CHUNK_ELEMENTS = 1 << 25  # float32 temporaries of at most 128 MiB each per chunk (a few live)


def _rows_per_chunk(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


class _OTRLoss(torch.autograd.Function):
    """Outputs (loss [], per-row stats [3, N]: mean reward, log pi(y*), entropy; no gradient)."""

    @staticmethod
    def forward(ctx, logits, targets, samples, num_samples: int, temperature: float, beta: float,
                closed_form: bool, generator, step: int):
        N, V = logits.shape
        dev = logits.device
        lse = torch.empty(N, dtype=torch.float32, device=dev)
        wsum = torch.empty(N, dtype=torch.float32, device=dev)  # sum_v w(v): the mean reward
        loss_rows = torch.empty(N, dtype=torch.float32, device=dev)
        stats = torch.empty(3, N, dtype=torch.float32, device=dev)
        drawn, scaled_reward = [], []
        for s in range(0, N, step):
            x = logits[s : s + step].float()
            tgt = targets[s : s + step, None]
            lse_c = torch.logsumexp(x, dim=-1)
            lse[s : s + step] = lse_c
            # exactly the plain expression's tempered softmax, row by row: the same draws
            tempered = torch.softmax(x / temperature, dim=-1)
            logp = x - lse_c[:, None]
            logp_y = logp.gather(-1, tgt).squeeze(-1)
            if closed_form:  # w = pi'(v) R(v) = beta pi'(v) + (1 - beta) pi'(y*) [v = y*]
                t_y = tempered.gather(-1, tgt).squeeze(-1)
                wsum[s : s + step] = beta * tempered.sum(-1) + (1 - beta) * t_y
                tlogp = tempered.mul_(logp).sum(-1)
                loss_rows[s : s + step] = -(beta * tlogp + (1 - beta) * t_y * logp_y)
            else:  # w = count(v) / K R(v): a sum over the K draws
                smp = (samples[s : s + step] if samples is not None else
                       torch.multinomial(tempered, num_samples, replacement=True, generator=generator))
                r = torch.where(smp == tgt, 1.0, beta).div_(smp.size(-1))
                wsum[s : s + step] = r.sum(-1)
                loss_rows[s : s + step] = -(r * logp.gather(-1, smp)).sum(-1)
                drawn.append(smp)
                scaled_reward.append(r)
            del tempered
            stats[1, s : s + step] = logp_y
            stats[2, s : s + step] = -logp.exp().mul_(logp).sum(-1)  # entropy of pi
        stats[0] = wsum
        saved = [logits, targets, lse, wsum]
        if not closed_form:
            saved += [torch.cat(drawn) if drawn else targets.new_empty(0, 1),
                      torch.cat(scaled_reward) if scaled_reward else lse.new_empty(0, 1)]
        ctx.save_for_backward(*saved)
        ctx.cfg = (temperature, beta, closed_form, step)
        ctx.mark_non_differentiable(stats)
        return loss_rows.mean(), stats

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_stats):
        logits, targets, lse, wsum, *sampled = ctx.saved_tensors
        temperature, beta, closed_form, step = ctx.cfg
        N = logits.size(0)
        g = grad_loss.float() / N
        grad = torch.empty_like(logits)
        for s in range(0, N, step):
            x = logits[s : s + step].float()
            # pi * sum_v w(v) - w, times dL/dloss / N
            d = (x - lse[s : s + step, None]).exp_().mul_(wsum[s : s + step, None])
            if closed_form:
                tempered = torch.softmax(x / temperature, dim=-1)
                t_y = tempered.gather(-1, targets[s : s + step, None])
                d.sub_(tempered.mul_(beta)).scatter_add_(-1, targets[s : s + step, None], -(1 - beta) * t_y)
                del tempered
            else:
                smp, r = sampled
                d.scatter_add_(-1, smp[s : s + step], -r[s : s + step])
            grad[s : s + step] = d.mul_(g)
        return grad, None, None, None, None, None, None, None, None


def otr_loss(logits: torch.Tensor, targets: torch.Tensor, *, num_samples: int = 256,
             temperature: float = 1.0, beta: float = -0.1, closed_form: bool = False,
             generator: torch.Generator | None = None, samples: torch.Tensor | None = None,
             chunk_rows: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over positions of -sum_v w(v) log pi(v). `samples` [N, K] fixes the draws (tests);
    `chunk_rows` rows go through float32 at a time (default: CHUNK_ELEMENTS / vocabulary)."""
    step = chunk_rows if chunk_rows is not None else _rows_per_chunk(logits.size(-1))
    if step < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {step}")
    loss, stats = _OTRLoss.apply(logits, targets, samples, int(num_samples), float(temperature),
                                 float(beta), bool(closed_form), generator, int(step))
    metrics = {
        "reward": float(stats[0].mean()),  # of the sampled candidates
        "gt_prob": float(stats[1].exp().mean()),
        "entropy": float(stats[2].mean()),
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


# `sft.loss` entries of registry.SFT_LOSSES: one signature, the recipe's `sft` section passed in
def sft_loss_from_config(logits, targets, cfg, generator=None):
    return sft_token_loss(logits, targets)


def otr_loss_from_config(logits, targets, cfg, generator=None):
    return otr_loss(logits, targets, num_samples=cfg.otr_num_samples, temperature=cfg.otr_temperature,
                    beta=cfg.otr_beta, closed_form=cfg.otr_closed_form, generator=generator)
