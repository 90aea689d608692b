"""log pi(token) and entropy from logits, with memory for one copy of the logits, not five.

Why our own op: the plain expression (cast to float32, divide by the temperature,
logsumexp, gather; softmax for the entropy) keeps several full [tokens, vocab] tensors
alive, and its backward adds more (logsumexp's and gather's gradients, then their sum).
With a 150k vocabulary that is the largest allocation of a training step. This op saves
only the logits it was given and a [tokens] vector; it works through the rows in chunks
in float32 and, backward, writes the one gradient tensor chunk by chunk:

    d logp_i / d x_ij = (onehot(target_i)_j - softmax(x_i / T)_j) / T

`benchmarks/logprob_memory.py` (float32 model, vocabulary 150k, 2,914 completion tokens,
forward + backward, CPU): peak 10.1 -> 4.0 GiB on packed rows, 13.0 -> 4.7 GiB padded
(24 -> 10 and 31 -> 11 bytes per token and vocabulary entry), same log-probs.
"""
from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 26  # float32 temporaries of at most 256 MiB per chunk


def _rows_per_chunk(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


def _scaled(chunk: torch.Tensor, temperature: float) -> torch.Tensor:
    """A float32 copy of a chunk of logits, divided by the temperature: ours to modify."""
    x = chunk.to(torch.float32, copy=True)
    return x.div_(temperature) if temperature != 1.0 else x


class _TokenLogprobs(torch.autograd.Function):
    """Outputs (log-probs [N], entropy [N] or an empty tensor): the entropy, a metric without a
    gradient, comes from the same pass over the chunks as the log-normaliser."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                with_entropy: bool):
        N, V = logits.shape
        lse = torch.empty(N, dtype=torch.float32, device=logits.device)
        entropy = torch.empty(N if with_entropy else 0, dtype=torch.float32, device=logits.device)
        step = _rows_per_chunk(V)
        for s in range(0, N, step):
            x = _scaled(logits[s : s + step], temperature)
            lse[s : s + step] = torch.logsumexp(x, dim=-1)
            if with_entropy:  # H = lse - sum_j p_j x_j
                p = (x - lse[s : s + step, None]).exp_()
                entropy[s : s + step] = lse[s : s + step] - p.mul_(x).sum(-1)
        picked = logits.gather(-1, targets[:, None]).squeeze(-1).float() / temperature
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(entropy)
        return picked - lse, entropy

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, _grad_entropy):
        logits, targets, lse = ctx.saved_tensors
        T = ctx.temperature
        grad = torch.empty_like(logits)
        step = _rows_per_chunk(logits.size(-1))
        for s in range(0, logits.size(0), step):
            g = grad_out[s : s + step].float() / T
            # softmax from the saved log-normaliser, times -g, plus g at the target
            p = _scaled(logits[s : s + step], T).sub_(lse[s : s + step, None]).exp_().mul_(-g[:, None])
            grad[s : s + step] = p.scatter_add_(-1, targets[s : s + step, None], g[:, None])
        return grad, None, None, None


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits [..., V] (any float dtype), targets [...] -> (log-probs [...] float32,
    entropy [...] or None; the entropy carries no gradient)."""
    shape = targets.shape
    logp, entropy = _TokenLogprobs.apply(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                         float(temperature), with_entropy)
    return logp.view(shape), entropy.view(shape) if with_entropy else None
