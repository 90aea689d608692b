"""Padding-free training rows: every op but attention runs on the real tokens only.

Why: packed rows (batching.py) end in padding wherever the next sequence did not fit; on
benchmarks/grpo_step_cpu.py they are ~90% full, and the linears, norms and activations of
a training pass run on every column, padding included. Here the model is given one flat
row of the N real tokens ([1, N] ids and positions); attention, the one op that needs the
rows, scatters q, k and v into the padded [R, C] rows, runs sdpa there with the packed
layout's block mask, and gathers its output back to the N tokens.

transformers looks up a layer's attention function by `config._attn_implementation` at
each call, so `flat_attention(model)` points it at this module's function for the span of
one forward (the function is sdpa itself when a call carries no regrouping index). Not for
gradient checkpointing: its recomputation runs in backward, after the span.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "rlreason_flat_sdpa"


def _attention(module, query, key, value, attention_mask, *, rlreason_rows=None, rlreason_shape=None,
               **kwargs):
    """query/key/value [1, heads, N, D]; `rlreason_rows` [N]: each token's index in the
    padded rows flattened (row * C + column), `rlreason_shape` (R, C)."""
    if rlreason_rows is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    R, C = rlreason_shape

    def rows(x: torch.Tensor) -> torch.Tensor:  # [1, H, N, D] -> [R, H, C, D], zeros at padding
        H, D = x.size(1), x.size(-1)
        padded = x.new_zeros(R * C, H, D).index_copy(0, rlreason_rows, x[0].transpose(0, 1))
        return padded.view(R, C, H, D).transpose(1, 2)

    out, weights = sdpa_attention_forward(module, rows(query), rows(key), rows(value), attention_mask, **kwargs)
    return out.reshape(R * C, *out.shape[2:]).index_select(0, rlreason_rows)[None], weights  # [1, N, H, D]


AttentionInterface.register(NAME, _attention)


def unwrap(model):
    """The module under DDP / DeepSpeed wrappers (a DeepSpeed engine has a `config` of its
    own; peft models forward attributes to the model themselves)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def usable(model) -> bool:
    """The model runs sdpa (what the packed layout's mask is for), has one config for all
    its layers (no sub-configs, whose attention setting the swap would not reach), and
    recomputes nothing in backward: neither transformers' gradient checkpointing nor
    torch's checkpoint wrappers (accelerate's FSDP activation checkpointing)."""
    m = unwrap(model)
    cfg = getattr(m, "config", None)
    if getattr(cfg, "_attn_implementation", None) != "sdpa" or getattr(cfg, "sub_configs", None):
        return False
    if getattr(m, "is_gradient_checkpointing", False):
        return False
    return not any(hasattr(x, "_checkpoint_wrapped_module") for x in m.modules())


@contextmanager
def flat_attention(model) -> Iterator[None]:
    cfg = unwrap(model).config
    before = cfg._attn_implementation
    cfg._attn_implementation = NAME
    try:
        yield
    finally:
        cfg._attn_implementation = before
