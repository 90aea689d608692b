"""The transformers rollout backend: the static-cache fast path must equal the reference."""
from __future__ import annotations

import pytest
import torch

from rlreason.rollout.hf import HFEngine, sample_tokens
from rlreason.tiny import char_tokenizer
from rlreason.types import SamplingParams


def _model(kind: str, lora: bool = False):
    import transformers as tf

    tok = char_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=96,
                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    if kind == "llama":
        m = tf.LlamaForCausalLM(tf.LlamaConfig(**common, num_key_value_heads=4))
    elif kind == "qwen2":  # grouped-query attention, q/k/v biases
        m = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, num_key_value_heads=2))
    else:  # qwen3: per-head q/k RMSNorm
        m = tf.Qwen3ForCausalLM(tf.Qwen3Config(**common, num_key_value_heads=2, head_dim=16))
    with torch.no_grad():  # random biases and norms, so a path that skips them is caught
        for n, p in m.named_parameters():
            if "bias" in n or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    if lora:
        from peft import LoraConfig, get_peft_model

        m = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                            "down_proj"]))
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.2)  # B starts at zero; make the adapter matter
    return m.eval(), tok


@pytest.fixture(params=["mkl", "onednn"])
def linears(request, monkeypatch):
    """The fused decode's matmuls as F.linear (the test models are below the packing
    threshold) or on oneDNN-packed weights (threshold lowered to 0)."""
    from rlreason.rollout import packed_linear

    if request.param == "onednn":
        if not packed_linear.onednn_available():
            pytest.skip("this torch has no oneDNN")
        monkeypatch.setattr(packed_linear, "PACK_MIN_NUMEL", 0)
    return request.param


@pytest.mark.parametrize("kind,lora", [("llama", False), ("qwen2", False), ("qwen3", False),
                                       ("llama", True)])
def test_static_cache_path_matches_transformers_forward(kind, lora, linears):
    from rlreason.rollout.static_cache import StaticCacheDecoder

    model, tok = _model(kind, lora)
    # float32 Llama/Qwen2 layers (LoRA folded in) take the fused decode; per-head q/k norms
    # the module-by-module one: both must give the reference's numbers
    fused = StaticCacheDecoder(model, 1, 8).fused
    assert (fused is not None) == (kind in ("llama", "qwen2"))
    if fused is not None:
        assert (fused.layers[0]["qkv"].packed is not None) == (linears == "onednn")
    # a one-token prompt: its decode mask exists from the prefill on (shared rows remap it)
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in ["1+2=", "345+9=", "7=", "7"]]
    sp = SamplingParams(temperature=1.0, max_tokens=12)
    outs = []
    for static in (False, True):
        eng = HFEngine(model, tok, seed=3, static_cache=static)
        outs.append([c for g in eng.generate(prompts, 3, sp) for c in g])  # shared prefills
        outs[-1] += [c for g in eng.generate(prompts[:3], 1, sp) for c in g]  # none shared
    ref, fast = outs
    assert [c.token_ids for c in ref] == [c.token_ids for c in fast]
    for a, b in zip(ref, fast):
        assert a.finish_reason == b.finish_reason
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)
    # and both equal a plain full forward over prompt + completion (teacher forcing)
    c = fast[4]
    ids = torch.tensor([c.prompt_token_ids + c.token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(c.prompt_token_ids) - 1 : -1]
    lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
    assert torch.allclose(lp, torch.tensor(c.logprobs), atol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_rows_leaving_the_cache_early_do_not_change_the_others(kind, linears):
    """Finished rows are dropped from the KV cache (and from the decode mask) as they
    finish; compacting at every finish must give what the reference loop gives."""
    model, tok = _model(kind)
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in ["1+2=", "345+9=", "7="]]
    # a third of the vocabulary ends a completion: rows finish at many different steps
    sp = SamplingParams(temperature=1.0, max_tokens=16, stop_token_ids=tuple(range(40, 75)))
    outs = []
    for static in (False, True):
        eng = HFEngine(model, tok, seed=5, static_cache=static)
        eng.compact_at = 1.0  # shrink the cache at every step that finishes a row
        outs.append([c for g in eng.generate(prompts, 4, sp) for c in g])
    ref, fast = outs
    lengths = sorted({len(c.token_ids) for c in fast})
    assert len(lengths) >= 4, lengths  # the batch really shrank several times
    assert [c.token_ids for c in ref] == [c.token_ids for c in fast]
    for a, b in zip(ref, fast):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_kv_storage_is_reused_across_rollouts_without_leaking_between_them(kind, monkeypatch):
    """On CPU the engine keeps the decode's K/V buffers for the next rollout, through
    sleep() while small (kv_buffers.py), and never zeroes them: every column a step reads
    was written earlier by the same rollout. Buffers filled with NaN before a rollout (any
    stale column read would poison it) give the same rollout as a fresh engine, bit for bit:
    fused decode (llama), grouped KV heads (qwen2), the unfused path (qwen3)."""
    from rlreason.rollout import kv_buffers

    model, tok = _model(kind)
    sp = SamplingParams(temperature=1.0, max_tokens=12, seed=3, stop_token_ids=tuple(range(40, 60)))
    target = [tok(p, add_special_tokens=False)["input_ids"] for p in ["12+3=", "4+56=", "7"]]
    other = [tok(p, add_special_tokens=False)["input_ids"] for p in ["987+65=", "1=", "34+5="]]
    fresh = HFEngine(model, tok, seed=0).generate(target, 4, sp)
    eng = HFEngine(model, tok, seed=0)
    eng.generate(other, 4, sp)
    eng.sleep()
    buffers = eng._kv_buffers
    assert buffers is not None  # small: kept through sleep
    with torch.inference_mode():  # the engine decodes in inference mode: its tensors are such
        for t in buffers.front + buffers.back:
            t.fill_(float("nan"))
    eng.generate(target, 2, sp)  # fewer rows than the buffers hold: still reused
    assert eng._kv_buffers is buffers
    again = eng.generate(target, 4, sp)
    assert eng._kv_buffers is buffers  # lengths round up to 16 columns: same size
    assert [[(c.token_ids, c.logprobs) for c in g] for g in again] == \
        [[(c.token_ids, c.logprobs) for c in g] for g in fresh]
    monkeypatch.setattr(kv_buffers, "KEEP_MAX_BYTES", 0)
    monkeypatch.setattr("rlreason.rollout.hf.KEEP_MAX_BYTES", 0)
    eng.sleep()
    assert eng._kv_buffers is None  # large storage goes back while the trainer trains


@pytest.mark.parametrize("cols", [3, 40])
def test_kv_buffers_copy_rows_in_order_with_repeats(cols):
    """The row copy of a compaction or a shared prefill: rows in the given order, repeats
    allowed, the written columns exact (the few-columns path and the whole-rows one)."""
    from rlreason.rollout.kv_buffers import KVBuffers

    buf = KVBuffers(2, (6, 2, 48, 4), torch.float32, "cpu")
    ks, vs = buf.views(4)
    for t in ks + vs:
        t.copy_(torch.randn_like(t))
    before = [t.clone() for t in ks + vs]
    rows = torch.tensor([3, 3, 0, 2, 1, 0])
    buf.copy_rows(4, rows, cols)
    ks, vs = buf.views(6)
    for old, new in zip(before, ks + vs):
        assert torch.equal(new[:, :, :cols], old[rows][:, :, :cols])
    with pytest.raises(ValueError, match="do not fit"):
        buf.copy_rows(6, torch.arange(7) % 6, cols)


def test_a_packed_linear_computes_what_f_linear_does(monkeypatch):
    """With or without bias and residual, for row counts other than the packing hint and
    for 3-d inputs; below the threshold it is F.linear / addmm exactly."""
    from rlreason.rollout import packed_linear
    from rlreason.rollout.packed_linear import PackedLinear

    torch.manual_seed(0)
    w, b = torch.randn(96, 64), torch.randn(96)
    for threshold in (0, w.numel() + 1):
        monkeypatch.setattr(packed_linear, "PACK_MIN_NUMEL", threshold)
        for bias in (None, b):
            lin = PackedLinear(w, bias, rows_hint=8)
            assert (lin.packed is not None) == (threshold == 0 and packed_linear.onednn_available())
            for shape in ((1, 64), (8, 64), (13, 64), (2, 5, 64)):
                x = torch.randn(*shape)
                ref = torch.nn.functional.linear(x, w, bias)
                r = torch.randn(ref.shape)
                if lin.packed is None:
                    assert torch.equal(lin(x), ref)
                    if bias is None and x.dim() == 2:
                        assert torch.equal(lin(x, residual=r), torch.addmm(r, x, w.t()))
                assert torch.allclose(lin(x), ref, atol=1e-5)
                assert torch.allclose(lin(x, residual=r), r + ref, atol=1e-5)


def test_only_small_float32_models_without_dora_take_the_fused_decode():
    from rlreason.rollout import static_cache

    model, _ = _model("llama")
    assert static_cache.StaticCacheDecoder(model, 1, 8).fused is not None
    assert static_cache.StaticCacheDecoder(model.to(torch.bfloat16), 1, 8).fused is None
    model = model.float()
    limit = static_cache.FUSE_MAX_BYTES
    try:
        static_cache.FUSE_MAX_BYTES = 1000
        assert static_cache.StaticCacheDecoder(model, 1, 8).fused is None
    finally:
        static_cache.FUSE_MAX_BYTES = limit
    # a LoRA adapter is folded into the copy; DoRA (a weight-dependent rescale) is not
    from peft import LoraConfig, get_peft_model

    dora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    assert static_cache.StaticCacheDecoder(dora, 1, 8).fused is None


def test_greedy_is_deterministic_and_seeded_sampling_repeats():
    model, tok = _model("llama")
    prompts = [tok("12+34=", add_special_tokens=False)["input_ids"]]
    eng = HFEngine(model, tok, seed=0)
    g1 = eng.generate(prompts, 2, SamplingParams(temperature=0, max_tokens=8))[0]
    assert g1[0].token_ids == g1[1].token_ids and all(lp == 0.0 for lp in g1[0].logprobs)
    s1 = eng.generate(prompts, 4, SamplingParams(temperature=1.0, max_tokens=8, seed=7))[0]
    s2 = eng.generate(prompts, 4, SamplingParams(temperature=1.0, max_tokens=8, seed=7))[0]
    assert [c.token_ids for c in s1] == [c.token_ids for c in s2]
    assert len({tuple(c.token_ids) for c in s1}) > 1  # samples differ within a group


def test_top_p_keeps_the_smallest_set_with_enough_mass():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    seen = {int(sample_tokens(logits, 1.0, 0.7, gen)[0]) for _ in range(300)}
    assert seen == {0, 1}  # 0.5 + 0.3 >= 0.7; tokens 2 and 3 are never drawn
    tok, lp = sample_tokens(logits, 1.0, 1.0, gen)
    assert lp.item() == pytest.approx(float(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])[tok])))


def test_stop_strings_cut_each_completion_where_its_text_first_holds_one():
    """Rows are sampled from one stream whatever ends them, so a completion stopped by a
    string is the unstopped one cut right after the token that completed the string."""
    model, tok = _model("llama")
    prompts = [tok("12+34=", add_special_tokens=False)["input_ids"], tok("7*8=", add_special_tokens=False)["input_ids"]]
    eng = HFEngine(model, tok, seed=0)
    stops = ("1", "2", "+3")
    free = eng.generate(prompts, 16, SamplingParams(temperature=1.0, max_tokens=24, seed=3))
    cut = eng.generate(prompts, 16, SamplingParams(temperature=1.0, max_tokens=24, seed=3, stop=stops))
    n_stopped = 0
    for f, c in zip((x for g in free for x in g), (x for g in cut for x in g)):
        k = next((k for k in range(1, len(f.token_ids) + 1)
                  if any(s in tok.decode(f.token_ids[:k], skip_special_tokens=True) for s in stops)), None)
        if k is None:
            assert c.token_ids == f.token_ids and c.finish_reason == f.finish_reason
        else:
            n_stopped += 1
            assert c.token_ids == f.token_ids[:k] and c.logprobs == f.logprobs[:k]
            assert c.finish_reason == "stop"
    assert n_stopped >= 4  # the test exercised the stop path


def test_sampling_params_with_stop_strings_travel_to_vllm_and_the_server():
    from rlreason.rollout.vllm import sampling_kwargs
    from rlreason.rollout.wire import sampling_from_json, sampling_to_json

    sp = SamplingParams(temperature=0.7, max_tokens=9, stop=("</answer>",), seed=4)
    assert sampling_from_json(sampling_to_json(sp)) == sp
    kw = sampling_kwargs(sp, 2, 4)
    assert kw["stop"] == ["</answer>"] and kw["include_stop_str_in_output"] is True


def test_a_minimum_length_defers_every_stop_and_keeps_the_policys_logprobs():
    """min_tokens: no EOS, stop token or stop string among the first min_tokens tokens;
    the logged log-probs are those of the distribution sampled from (stops excluded while
    the minimum holds, as vLLM's processed log-probs), checked against a teacher-forced
    forward."""
    from serving import logprobs_of

    model, tok = _model("llama")
    prompts = [tok("12+34=", add_special_tokens=False)["input_ids"]]
    digits = tuple(tok.convert_tokens_to_ids(list("0123456789")))
    eng = HFEngine(model, tok, seed=0)
    free = eng.generate(prompts, 16, SamplingParams(max_tokens=12, seed=1, stop_token_ids=digits))[0]
    assert sum(len(c.token_ids) <= 3 for c in free) >= 4  # without it, digits end them early
    m = 5
    sp = SamplingParams(max_tokens=12, seed=1, stop_token_ids=digits, stop=("+",), min_tokens=m)
    held = eng.generate(prompts, 16, sp)[0]
    stops = set(digits) | {tok.eos_token_id}
    for c in held:
        assert not stops & set(c.token_ids[:m]) and len(c.token_ids) > m
        assert c.finish_reason == "length" or c.token_ids[-1] in stops or "+" in tok.decode(c.token_ids)
        want = logprobs_of(model, prompts[0], c.token_ids, banned=tuple(stops),
                           held=[t < m for t in range(len(c.token_ids))])
        assert c.logprobs == pytest.approx(want.tolist(), abs=1e-4)
        free_lp = logprobs_of(model, prompts[0], c.token_ids)
        assert (free_lp[:m] < want[:m]).all()  # excluding stops raised every held token's probability
    greedy = eng.generate(prompts, 1, SamplingParams(temperature=0, max_tokens=12, stop_token_ids=digits,
                                                     min_tokens=m))[0][0]
    assert not stops & set(greedy.token_ids[:m])


def test_a_minimum_length_is_checked_against_the_maximum_and_travels_everywhere():
    from rlreason.config import RolloutConfig
    from rlreason.rollout.vllm import sampling_kwargs
    from rlreason.rollout.wire import sampling_from_json, sampling_to_json

    with pytest.raises(ValueError, match="min_completion_length.*exceeds.*max_completion_length"):
        RolloutConfig(max_completion_length=8, min_completion_length=9)
    cfg = RolloutConfig(max_completion_length=8, min_completion_length=6)
    assert cfg.sampling().min_tokens == 6
    assert cfg.sampling(max_tokens=4).min_tokens == 4  # a shorter evaluation limit bounds it
    sp = cfg.sampling()
    assert sampling_from_json(sampling_to_json(sp)) == sp
    assert sampling_kwargs(sp, 2, 0)["min_tokens"] == 6
    assert "min_tokens" not in sampling_kwargs(RolloutConfig().sampling(), 2, 0)
