"""Packed and padded layouts must score every completion token identically."""
from __future__ import annotations

import random

import pytest
import torch

from rlreason.batching import Sequence, collate, completion_logprobs, micro_batches
from rlreason.tiny import char_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def model():
    return tiny_llama(char_tokenizer(), 2, 64, 128, 4, seed=0)


def _seqs(n=7, seed=0):
    rng = random.Random(seed)
    return [Sequence(prompt=[rng.randint(4, 90) for _ in range(rng.randint(2, 6))],
                     completion=[rng.randint(4, 90) for _ in range(rng.randint(1, 9))],
                     advantage=rng.uniform(-1, 1), truncated=False) for _ in range(n)]


def test_packed_equals_padded_logprobs_and_gradients(model):
    seqs = _seqs()
    results = []
    for pack in (False, True):
        model.zero_grad()
        batch = collate(seqs, 0, "cpu", pack=pack)
        logp, ent = completion_logprobs(model, batch, temperature=0.8, with_entropy=True)
        (logp * batch["completion_mask"]).sum().backward()
        grad = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
        results.append((logp, ent, batch["completion_mask"], grad))
    (lp0, e0, m0, g0), (lp1, e1, m1, g1) = results
    assert torch.equal(m0, m1)
    assert torch.allclose(lp0 * m0, lp1 * m1, atol=1e-5)
    assert torch.allclose(e0 * m0, e1 * m1, atol=1e-5)
    assert torch.allclose(g0, g1, atol=1e-5)
    packed = collate(seqs, 0, "cpu", pack=True)
    assert packed["input_ids"].size(0) < len(seqs)  # several sequences share rows
    # and each equals scoring the sequence alone, unpadded
    s = seqs[3]
    ids = torch.tensor([s.prompt + s.completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(s.prompt) - 1 : -1] / 0.8
    alone = torch.log_softmax(logits, -1).gather(-1, torch.tensor(s.completion)[:, None])[:, 0]
    assert torch.allclose(lp1[3, : len(s.completion)].detach(), alone, atol=1e-5)


def test_micro_batches_group_similar_lengths():
    seqs = _seqs(10, seed=1)
    mbs = micro_batches(seqs, 4)
    assert [len(m) for m in mbs] == [4, 4, 2]
    lengths = [len(s.prompt) + len(s.completion) for m in mbs for s in m]
    assert lengths == sorted(lengths)


def test_completions_of_one_prompt_share_it_when_packed(model):
    """G completions of a prompt: one prompt copy per row, same log-probs as alone."""
    base = _seqs(3, seed=2)
    rng = random.Random(5)
    seqs = [Sequence(prompt=s.prompt, completion=[rng.randint(4, 90) for _ in range(rng.randint(1, 7))],
                     advantage=0.0, truncated=False) for s in base for _ in range(4)]
    padded = collate(seqs, 0, "cpu", pack=False)
    packed = collate(seqs, 0, "cpu", pack=True, share_prompts=True)
    n_real = sum(len(s.prompt) + len(s.completion) for s in seqs)
    n_shared = sum(len(s.prompt) for s in base) + sum(len(s.completion) for s in seqs)
    used = int((packed["input_ids"] != 0).sum())
    assert n_shared <= used < n_real  # some completions share a prompt copy
    assert packed["input_ids"].size(1) == max(len(s.prompt) + len(s.completion) for s in seqs)
    with torch.no_grad():
        a, _ = completion_logprobs(model, padded, 1.0)
        b, _ = completion_logprobs(model, packed, 1.0)
    m = padded["completion_mask"]
    assert torch.allclose(a * m, b * m, atol=1e-5)
    mbs = micro_batches(seqs, 8, group_size=4)
    assert all(len({tuple(s.prompt) for s in mb}) == len(mb) // 4 for mb in mbs)


@pytest.mark.parametrize("gqa", [False, True])
def test_flat_row_scores_and_trains_as_the_padded_rows(model, gqa):
    """With shared prompts the packed batch also holds its real tokens as one flat row
    (flat_attention.py): the model runs on it, not on the padded rows, with the same
    log-probs and gradients (grouped KV heads too); its attention setting is restored
    after; under gradient checkpointing the rows are used."""
    if gqa:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=model.config.vocab_size, hidden_size=64,
                                             intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2))
    base = _seqs(4, seed=3)
    rng = random.Random(7)
    seqs = [Sequence(prompt=s.prompt, completion=[rng.randint(4, 90) for _ in range(rng.randint(1, 9))],
                     advantage=0.0, truncated=False) for s in base for _ in range(4)]
    batch = collate(seqs, 0, "cpu", pack=True, share_prompts=True)
    n_flat = batch["flat"]["input_ids"].size(1)
    assert n_flat < batch["input_ids"].numel()  # the rows end in padding; the flat row does not
    shapes = []
    hook = model.model.embed_tokens.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape)))
    params = [model.model.layers[0].self_attn.q_proj.weight, model.model.layers[1].mlp.down_proj.weight,
              model.model.embed_tokens.weight]
    results = []
    try:
        for variant in ("rows", "flat", "checkpointing"):
            b = {k: v for k, v in batch.items() if k != "flat" or variant != "rows"}
            if variant == "checkpointing":
                model.gradient_checkpointing_enable()
            model.zero_grad()
            logp, _ = completion_logprobs(model, b, 0.9)
            (logp * b["completion_mask"]).sum().backward()
            model.gradient_checkpointing_disable()
            results.append((logp.detach(), [p.grad.clone() for p in params]))
    finally:
        hook.remove()
        model.gradient_checkpointing_disable()
    assert shapes == [tuple(batch["input_ids"].shape), (1, n_flat), tuple(batch["input_ids"].shape)]
    assert model.config._attn_implementation == "sdpa"
    (lp0, g0), (lp1, g1), (lp2, g2) = results
    m = batch["completion_mask"]
    assert torch.allclose(lp0 * m, lp1 * m, atol=1e-6) and torch.allclose(lp0 * m, lp2 * m, atol=1e-6)
    for a, b, c in zip(g0, g1, g2):
        assert a.abs().sum() > 0
        assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-6)


def test_flat_row_only_where_nothing_is_recomputed_in_backward(model):
    """The flat forward swaps the attention function for its own span only, so a model
    that recomputes layers in backward (transformers' gradient checkpointing, torch's
    checkpoint wrappers as accelerate's FSDP applies them) or is not on sdpa keeps the
    rows; wrappers (DDP, DeepSpeed: `.module`) are looked through."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    from rlreason import flat_attention

    class Wrapper(torch.nn.Module):  # as DeepSpeed's engine: a config of its own, the model in .module
        def __init__(self, m):
            super().__init__()
            self.module, self.config = m, {"train_batch_size": 8}

    assert flat_attention.usable(model) and flat_attention.usable(Wrapper(model))
    model.gradient_checkpointing_enable()
    assert not flat_attention.usable(model)
    model.gradient_checkpointing_disable()
    layer = model.model.layers[1]
    model.model.layers[1] = checkpoint_wrapper(layer)
    try:
        assert not flat_attention.usable(model)
    finally:
        model.model.layers[1] = layer
    model.config._attn_implementation = "eager"
    try:
        assert not flat_attention.usable(model)
    finally:
        model.config._attn_implementation = "sdpa"
    assert flat_attention.usable(model)
