"""How sampled sequences become training tensors, and their completion log-probs.

Two layouts, same result (tests check they agree):
  * padded: prompts left-padded, completions right-padded, one sequence per row, so all
    completions start at one column. Works with every attention implementation.
  * packed: several whole sequences share a row, each attending only to itself (a
    block-diagonal causal mask for sdpa; position-id resets for flash-attention). RL
    completions vary a lot in length, so padding wastes much of the compute; packing
    spends it only on real tokens (measured: ~40% fewer token-positions on the
    benchmark in benchmarks/).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

PACKABLE_ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3")


@dataclass
class Sequence:
    """One prompt + sampled completion, as the trainer scores it."""

    prompt: list[int]
    completion: list[int]
    advantage: float
    truncated: bool
    old_logp: torch.Tensor | None = None  # [T] when num_iterations > 1
    ref_logp: torch.Tensor | None = None  # [T] when beta > 0


def micro_batches(seqs: list[Sequence], size: int) -> list[list[Sequence]]:
    """Split into micro-batches of similar length (less padding, less compute)."""
    order = sorted(seqs, key=lambda s: len(s.prompt) + len(s.completion))
    return [order[i : i + size] for i in range(0, len(order), size)]


def _completion_mask(seqs: list[Sequence], T: int) -> torch.Tensor:
    mask = torch.zeros((len(seqs), T), dtype=torch.float32)
    for i, s in enumerate(seqs):
        mask[i, : len(s.completion)] = 1.0
    return mask


def collate(seqs: list[Sequence], pad_id: int, device, *, pack: bool = False,
            attn_implementation: str = "sdpa") -> dict[str, Any]:
    """Tensors for one micro-batch; completion_mask is [B, T] in both layouts."""
    T = max(max(len(s.completion) for s in seqs), 1)
    if pack:
        return _packed(seqs, pad_id, device, T, attn_implementation)
    P = max(len(s.prompt) for s in seqs)
    B = len(seqs)
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + T), dtype=torch.long)
    for i, s in enumerate(seqs):
        p, c = len(s.prompt), len(s.completion)
        ids[i, P - p : P] = torch.tensor(s.prompt, dtype=torch.long)
        ids[i, P : P + c] = torch.tensor(s.completion, dtype=torch.long)
        attn[i, P - p : P + c] = 1
    return {"input_ids": ids.to(device), "attention_mask": attn.to(device),
            "completion_mask": _completion_mask(seqs, T).to(device), "prompt_len": P}


def _packed(seqs: list[Sequence], pad_id: int, device, T: int, attn_impl: str) -> dict[str, Any]:
    """First-fit-decreasing packing into rows as long as the longest sequence."""
    lengths = [len(s.prompt) + len(s.completion) for s in seqs]
    C = max(lengths)
    rows: list[list[int]] = []  # sequence indices per row
    free: list[int] = []
    for i in sorted(range(len(seqs)), key=lambda i: -lengths[i]):
        r = next((r for r, f in enumerate(free) if f >= lengths[i]), None)
        if r is None:
            rows.append([])
            free.append(C)
            r = len(rows) - 1
        rows[r].append(i)
        free[r] -= lengths[i]
    ids = torch.full((len(rows), C), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), C), dtype=torch.long)
    seg = torch.full((len(rows), C), -1, dtype=torch.long)
    src_r, src_c, dst_b, dst_t, targets = [], [], [], [], []
    for r, members in enumerate(rows):
        col = 0
        for i in members:
            s, n, p = seqs[i], lengths[i], len(seqs[i].prompt)
            ids[r, col : col + n] = torch.tensor(s.prompt + s.completion, dtype=torch.long)
            pos[r, col : col + n] = torch.arange(n)
            seg[r, col : col + n] = i
            c = len(s.completion)  # position col+p-1+t predicts completion token t
            src_r += [r] * c
            src_c += range(col + p - 1, col + p - 1 + c)
            dst_b += [i] * c
            dst_t += range(c)
            targets += s.completion
            col += n
        pos[r, col:] = torch.arange(C - col)  # the tail is its own (ignored) segment
    batch: dict[str, Any] = {
        "input_ids": ids.to(device), "position_ids": pos.to(device),
        "completion_mask": _completion_mask(seqs, T).to(device),
        "gather": tuple(torch.tensor(x, dtype=torch.long, device=device)
                        for x in (src_r, src_c, dst_b, dst_t, targets)),
    }
    if attn_impl == "sdpa":  # block-diagonal causal mask; padding attends to itself only
        causal = torch.ones(C, C, dtype=torch.bool).tril()
        same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
        mask = (same & causal) | torch.eye(C, dtype=torch.bool)
        batch["attention_mask"] = mask[:, None].to(device)
    else:  # flash-attention: transformers splits sequences where position ids reset
        batch["attention_mask"] = None
    return batch


def _logp_and_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                      with_entropy: bool):
    """log-softmax as gather - logsumexp (no full log-prob tensor kept); [..., V] -> [...]."""
    logits = logits.float() / temperature
    lse = logits.logsumexp(-1)
    logp = logits.gather(-1, targets[..., None]).squeeze(-1) - lse
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = lse - (torch.softmax(logits, -1) * logits).sum(-1)
    return logp, entropy


def completion_logprobs(model, batch: dict[str, Any], temperature: float,
                        with_entropy: bool = False):
    """log pi(token) of each completion token under logits / temperature: [B, T]."""
    mask = batch["completion_mask"]
    if "gather" in batch:
        src_r, src_c, dst_b, dst_t, targets = batch["gather"]
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=batch["attention_mask"], use_cache=False).logits
        flat_lp, flat_ent = _logp_and_entropy(logits[src_r, src_c], targets, temperature,
                                              with_entropy)
        logp = flat_lp.new_zeros(mask.shape).index_put((dst_b, dst_t), flat_lp)
        entropy = None
        if flat_ent is not None:
            entropy = flat_ent.new_zeros(mask.shape).index_put((dst_b, dst_t), flat_ent)
        return logp, entropy
    ids, attn, P = batch["input_ids"], batch["attention_mask"], batch["prompt_len"]
    T = ids.size(1) - P
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    # only the last T+1 positions are projected to the vocabulary (large vocabularies)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos,
                   logits_to_keep=T + 1, use_cache=False).logits[:, :-1]
    return _logp_and_entropy(logits, ids[:, P:], temperature, with_entropy)
