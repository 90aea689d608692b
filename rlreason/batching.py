"""How sampled sequences become training tensors, and their completion log-probs.

Three layouts, same result (tests check they agree):
  * padded: prompts left-padded, completions right-padded, one sequence per row, so all
    completions start at one column. Works with every attention implementation.
  * packed: several sequences share a row, each attending only to its own tokens (a
    block-causal mask for sdpa; position-id resets for flash-attention), and with sdpa
    the G completions of a prompt can share one copy of it. RL completions vary a lot in
    length, so padding wastes much of the compute; packing spends it on real tokens only
    (on benchmarks/grpo_step_cpu.py the training forward+backward went from 263 ms to
    about 150 ms per step).
  * flat (with shared prompts, sdpa): the packed rows' real tokens as one row, the padding
    at the rows' ends dropped; only attention regroups them into the rows
    (flat_attention.py). Rows there are ~90% full, so the linears, norms and activations
    do ~10% less work: forward+backward 391 -> 361 ms and 352 -> 331 ms on two batches of
    that benchmark, the same log-probs, gradients within 1.5e-7.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import flat_attention
from .algos.token_logprobs import token_logprobs

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
    sampler_logp: list[float] | None = None  # what the rollout engine reported
    loss_mask: list[int] | None = None  # episodes: 0 on tokens an environment inserted

    @property
    def num_trained_tokens(self) -> int:
        """Completion tokens that carry loss (the model's own)."""
        return len(self.completion) if self.loss_mask is None else sum(self.loss_mask)


def micro_batches(seqs: list[Sequence], size: int, group_size: int = 1) -> list[list[Sequence]]:
    """Split into micro-batches of about `size` sequences and similar length.

    Consecutive runs of `group_size` sequences (a prompt's group) stay together, so packing
    can share their prompt; groups are ordered by total length to keep padding small.
    """
    g = group_size if group_size > 1 and len(seqs) % group_size == 0 else 1
    groups = [seqs[i : i + g] for i in range(0, len(seqs), g)]
    groups.sort(key=lambda grp: sum(len(s.prompt) + len(s.completion) for s in grp))
    per = max(1, size // g)
    return [[s for grp in groups[i : i + per] for s in grp] for i in range(0, len(groups), per)]


def _completion_mask(seqs: list[Sequence], T: int) -> torch.Tensor:
    mask = torch.zeros((len(seqs), T), dtype=torch.float32)
    for i, s in enumerate(seqs):
        if s.loss_mask is None:
            mask[i, : len(s.completion)] = 1.0
        else:  # an episode: the environment's tokens are context, not trained on
            mask[i, : len(s.completion)] = torch.tensor(s.loss_mask, dtype=torch.float32)
    return mask


def collate(seqs: list[Sequence], pad_id: int, device, *, pack: bool = False,
            attn_implementation: str = "sdpa", share_prompts: bool = False) -> dict[str, Any]:
    """Tensors for one micro-batch; completion_mask is [B, T] in both layouts."""
    T = max(max(len(s.completion) for s in seqs), 1)
    if pack:
        return _packed(seqs, pad_id, device, T, attn_implementation, share_prompts)
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


def _first_fit(sizes: list[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing bin packing: indices of `sizes` grouped into bins <= capacity."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        b = next((b for b, f in enumerate(free) if f >= sizes[i]), None)
        if b is None:
            bins.append([])
            free.append(capacity)
            b = len(bins) - 1
        bins[b].append(i)
        free[b] -= sizes[i]
    return bins


def _units(seqs: list[Sequence], share_prompts: bool, capacity: int) -> list[tuple[list[int], list[int]]]:
    """(prompt, member sequence indices). Sharing, a prompt's completions are split into
    units that each fit in `capacity` tokens with one copy of the prompt."""
    if not share_prompts:
        return [(s.prompt, [i]) for i, s in enumerate(seqs)]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(seqs):
        groups.setdefault(tuple(s.prompt), []).append(i)
    units = []
    for prompt, members in groups.items():
        sizes = [len(seqs[i].completion) for i in members]
        for b in _first_fit(sizes, capacity - len(prompt)):
            units.append((list(prompt), [members[j] for j in b]))
    return units


def _packed(seqs: list[Sequence], pad_id: int, device, T: int, attn_impl: str,
            share_prompts: bool) -> dict[str, Any]:
    """Pack units (a prompt and its completions) first-fit-decreasing into rows.

    Rows are as long as the longest sequence. With `share_prompts` (sdpa only), completions
    of one prompt that fit together in a row share one copy of the prompt: each attends to
    the prompt and to itself, with positions continuing after the prompt, exactly what it
    saw when sampled. Rows never grow for it (a first version put all G completions behind
    one prompt: rows G times longer, and the dense mask's quadratic attention cost more than
    the saved prompt tokens). Flash-attention separates sequences by position-id resets
    only, so there each sequence always carries its own prompt.
    """
    share = share_prompts and attn_impl == "sdpa"
    C = max(len(s.prompt) + len(s.completion) for s in seqs)  # no row is longer than this
    units = _units(seqs, share, C)
    rows = _first_fit([len(p) + sum(len(seqs[i].completion) for i in m) for p, m in units], C)
    ids = torch.full((len(rows), C), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), C), dtype=torch.long)
    uid = torch.full((len(rows), C), -1, dtype=torch.long)  # unit of each column
    mid = torch.full((len(rows), C), -1, dtype=torch.long)  # sequence of each completion column
    src_r, src_c, dst_b, dst_t, targets, used = [], [], [], [], [], []
    for r, members in enumerate(rows):
        col = 0
        for u in members:
            prompt, seq_ids = units[u]
            P = len(prompt)
            ids[r, col : col + P] = torch.tensor(prompt, dtype=torch.long)
            pos[r, col : col + P] = torch.arange(P)
            uid[r, col : col + P] = u
            last_prompt_col = col + P - 1
            col += P
            for i in seq_ids:
                comp = seqs[i].completion
                c = len(comp)
                ids[r, col : col + c] = torch.tensor(comp, dtype=torch.long)
                pos[r, col : col + c] = torch.arange(P, P + c)
                uid[r, col : col + c] = u
                mid[r, col : col + c] = i
                # token t is predicted at the previous column: the prompt's last for t = 0
                src_r += [r] * c
                src_c += [last_prompt_col] + list(range(col, col + c - 1))
                dst_b += [i] * c
                dst_t += range(c)
                targets += comp
                col += c
        pos[r, col:] = torch.arange(C - col)  # the tail is its own (ignored) segment
        used.append(col)
    src = torch.tensor(src_r, dtype=torch.long) * C + torch.tensor(src_c, dtype=torch.long)
    batch: dict[str, Any] = {
        "input_ids": ids.to(device), "position_ids": pos.to(device),
        "completion_mask": _completion_mask(seqs, T).to(device),
        # src: each completion token's predicting column in the rows flattened (row * C + col)
        "gather": (src.to(device), *(torch.tensor(x, dtype=torch.long, device=device)
                                     for x in (dst_b, dst_t, targets))),
    }
    if share:
        # key k is visible to query q: same unit, not in the future, and either a prompt
        # column or the query's own sequence; padding attends only to itself
        causal = torch.ones(C, C, dtype=torch.bool).tril()
        same_unit = (uid[:, :, None] == uid[:, None, :]) & (uid[:, :, None] >= 0)
        own = (mid[:, None, :] == -1) | (mid[:, None, :] == mid[:, :, None])
        mask = (same_unit & own & causal) | torch.eye(C, dtype=torch.bool)
        batch["attention_mask"] = mask[:, None].to(device)
        # the same rows without their padding tails, as one flat row (flat_attention.py)
        real = torch.cat([torch.arange(r * C, r * C + n) for r, n in enumerate(used)])
        at = torch.full((len(used) * C,), -1, dtype=torch.long)  # column -> its flat index
        at[real] = torch.arange(real.numel())
        batch["flat"] = {"input_ids": ids.view(-1)[real][None].to(device),
                         "position_ids": pos.view(-1)[real][None].to(device),
                         "rows": real.to(device), "shape": (len(used), C), "src": at[src].to(device)}
    else:  # flash-attention: transformers splits sequences where position ids reset
        batch["attention_mask"] = None
    return batch


def _packed_logits(model, batch: dict[str, Any]) -> torch.Tensor:
    """Logits [N, V] at the completion positions of a packed batch: from its flat row where
    the model can take one (flat_attention.py), else from its rows."""
    flat = batch.get("flat")
    if flat is not None and flat_attention.usable(model):
        with flat_attention.flat_attention(model):
            logits = model(input_ids=flat["input_ids"], position_ids=flat["position_ids"],
                           attention_mask=batch["attention_mask"], use_cache=False,
                           rlreason_rows=flat["rows"], rlreason_shape=flat["shape"]).logits
        return logits[0, flat["src"]]
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                   attention_mask=batch["attention_mask"], use_cache=False).logits
    return logits.flatten(0, 1)[batch["gather"][0]]


def completion_logits(model, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, V], targets [N]) at the N completion positions of a batch, flattened:
    what a token-level supervised loss (SFT, OTR) needs."""
    if "gather" in batch:
        return _packed_logits(model, batch), batch["gather"][3]
    ids, attn, P = batch["input_ids"], batch["attention_mask"], batch["prompt_len"]
    T = ids.size(1) - P
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos,
                   logits_to_keep=T + 1, use_cache=False).logits[:, :-1]
    keep = batch["completion_mask"].bool()
    return logits[keep], ids[:, P:][keep]


def completion_logprobs(model, batch: dict[str, Any], temperature: float,
                        with_entropy: bool = False):
    """log pi(token) of each completion token under logits / temperature: [B, T]."""
    mask = batch["completion_mask"]
    if "gather" in batch:
        _, dst_b, dst_t, targets = batch["gather"]
        picked = _packed_logits(model, batch)  # completion positions only
        flat_lp, flat_ent = token_logprobs(picked, targets, temperature, with_entropy)
        logp = flat_lp.new_zeros(mask.shape).index_put((dst_b, dst_t), flat_lp)
        entropy = None
        if flat_ent is not None:
            entropy = flat_ent.new_zeros(mask.shape).index_put((dst_b, dst_t), flat_ent)
        return logp, entropy
    ids, attn, P = batch["input_ids"], batch["attention_mask"], batch["prompt_len"]
    T = ids.size(1) - P
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    # only the last T+1 positions are projected to the vocabulary (large vocabularies); the
    # last one predicts past the end (target: padding), dropped below, so no slice is copied
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos,
                   logits_to_keep=T + 1, use_cache=False).logits
    targets = torch.cat([ids[:, P:], ids.new_zeros(ids.size(0), 1)], dim=1)
    logp, entropy = token_logprobs(logits, targets, temperature, with_entropy)
    return logp[:, :-1], None if entropy is None else entropy[:, :-1]


def stack_padded(tensors: list[torch.Tensor], length: int) -> torch.Tensor:
    """1-d tensors right-padded with 0 to `length` and stacked: [len(tensors), length]."""
    return torch.stack([torch.nn.functional.pad(t, (0, length - t.numel())) for t in tensors])
