"""Supervised fine-tuning on (prompt, target) pairs: the warm-start before RL.

Only target tokens (and the EOS that ends them) carry loss; prompt tokens are context.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F


def encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Token ids of each (prompt, target), EOS appended to the target."""
    out = []
    for prompt, target in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((p, t))
    return out


def collate_sft(batch: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded input ids, attention mask and labels (-100 on prompt and padding)."""
    length = max(len(p) + len(t) for p, t in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for i, (p, t) in enumerate(batch):
        seq = p + t
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p) : len(seq)] = torch.tensor(t)
        mask[i, : len(seq)] = 1
    return ids, mask, labels


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions. logits [B,L,V], labels [B,L]."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1),
        ignore_index=-100,
    )


def supervised_warmstart(model, tokenizer, pairs: list[tuple[str, str]], *, steps: int,
                         batch_size: int, lr: float, seed: int = 0) -> list[float]:
    """AdamW, linear warmup then constant LR; returns the loss per step.

    Constant rather than decaying: a warm-start stopped part-way should leave a policy
    that is still improving (measured on the synthetic task: cosine decay to zero froze
    the tiny model before it had learned the carry, and RL could not recover it).
    """
    data = encode_pairs(tokenizer, pairs)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = min(50, max(1, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warm))
    model.train()
    losses = []
    for _ in range(steps):
        ids, mask, labels = collate_sft(rng.sample(data, min(batch_size, len(data))),
                                        tokenizer.pad_token_id)
        loss = sft_loss(model(input_ids=ids, attention_mask=mask).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses
