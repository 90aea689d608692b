"""Skill vectors: exact round trips, LoRA deltas, refusals, linear merges, bounded memory."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from rlreason import skills
from rlreason.tiny import char_tokenizer, tiny_llama


def _weights(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.fixture
def pair(tmp_path):
    """A base model and a 'tuned' copy whose every weight moved."""
    tok = char_tokenizer()
    base = tiny_llama(tok, 2, 32, 64, 2, seed=0)
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    base.save_pretrained(tmp_path / "tuned")
    return tmp_path / "base", tmp_path / "tuned"


def test_extract_then_apply_reproduces_the_tuned_model_bit_for_bit(pair, tmp_path):
    base, tuned = pair
    m = skills.extract(base, tuned, tmp_path / "v", source_recipe="recipes/x.yaml")
    assert m["kind"] == "full" and m["source_recipe"] == "recipes/x.yaml"
    assert (tmp_path / "v" / "manifest.json").is_file()
    skills.apply(base, tmp_path / "v", tmp_path / "out", scale=1.0)
    want, got = _weights(tuned), _weights(tmp_path / "out")
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)  # exact, not just close
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # a loadable model folder
    skills.apply(base, tmp_path / "v", tmp_path / "same", scale=0.0)
    b = _weights(base)
    assert all(torch.equal(b[k], v) for k, v in _weights(tmp_path / "same").items())


def test_module_filter_and_in_memory_apply(pair, tmp_path):
    base, tuned = pair
    skills.extract(base, tuned, tmp_path / "v")
    skills.apply(base, tmp_path / "v", tmp_path / "attn", scale=0.5, modules=["self_attn"])
    b, t, got = _weights(base), _weights(tuned), _weights(tmp_path / "attn")
    for k in b:
        if "self_attn" in k:
            assert torch.allclose(got[k], b[k] + 0.5 * (t[k] - b[k]), atol=1e-7)
        else:
            assert torch.equal(got[k], b[k])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    assert skills.apply_in_memory(model, tmp_path / "v", 0.5, modules=["self_attn"]) > 0
    for k, p in model.state_dict().items():
        if k in got:
            assert torch.equal(p, got[k]), k


def test_lora_delta_stays_low_rank_and_matches_merge(pair, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base, _ = pair
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    model.save_pretrained(tmp_path / "adapter")
    m = skills.extract(base, tmp_path / "adapter", tmp_path / "v")
    assert m["kind"] == "lora" and all(e["rank"] == 4 for e in m["tensors"].values())
    stored = _weights(tmp_path / "v")
    assert all(t.shape[0] == 4 or t.shape[1] == 4 for t in stored.values())  # factors only
    skills.apply(base, tmp_path / "v", tmp_path / "out")
    merged = model.merge_and_unload().state_dict()
    got = _weights(tmp_path / "out")
    for k, v in got.items():
        assert torch.allclose(v, merged[k], atol=1e-6), k


def test_mismatched_base_is_refused(pair, tmp_path):
    base, tuned = pair
    skills.extract(base, tuned, tmp_path / "v")
    tok = char_tokenizer()
    tiny_llama(tok, 2, 64, 64, 2, seed=0).save_pretrained(tmp_path / "other")
    with pytest.raises(skills.SkillError, match="hidden_size 32 .vector. vs 64 .model."):
        skills.apply(tmp_path / "other", tmp_path / "v", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(skills.SkillError, match="manifest"):
        skills.apply(base, tmp_path, tmp_path / "out2")


def test_merge_is_linear_and_inspect_measures_cosine(pair, tmp_path):
    base, tuned = pair
    skills.extract(base, tuned, tmp_path / "v1")
    skills.extract(tuned, base, tmp_path / "v2")  # exactly -v1
    skills.merge([tmp_path / "v1", tmp_path / "v1"], tmp_path / "m", weights=[0.25, 0.5])
    d1 = dict(skills.vector_deltas(tmp_path / "v1"))
    for k, d in skills.vector_deltas(tmp_path / "m"):
        assert torch.allclose(d, 0.75 * d1[k], atol=1e-12)
    info = skills.inspect(tmp_path / "v1", tmp_path / "v2")
    assert info["cosine"] == pytest.approx(-1.0)
    assert info["norm"] == pytest.approx(float(torch.sqrt(sum(d.pow(2).sum() for d in d1.values()))))
    assert "model.layers.0" in info["norm_per_layer"]


def test_ties_keeps_top_magnitudes_and_the_majority_sign():
    a = torch.tensor([3.0, -1.0, 0.1, 2.0])
    b = torch.tensor([1.0, -2.0, -0.2, -4.0])
    # density 0.5 keeps the 2 largest of each: a -> [3, 0, 0, 2]; b -> [0, -2, 0, -4]
    # signs by total mass: [+, -, 0, -]; means of agreeing entries: [3, -2, 0, -4]
    assert torch.equal(skills._ties([a, b], 0.5), torch.tensor([3.0, -2.0, 0.0, -4.0]))


def test_memory_stays_below_one_model_copy(tmp_path):
    """~150 MB of float32 weights in 20 MB shards: extract + apply stream tensor by tensor, so
    the peak grows by less than one model (holding two, as a naive base + delta would, is
    twice that). Measured: ~86 MB."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=512, hidden_size=512, intermediate_size=1408,
                      num_hidden_layers=12, num_attention_heads=8)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(tmp_path / "base", max_shard_size="20MB")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(tmp_path / "tuned", max_shard_size="20MB")
    size_mb = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    del model
    script = textwrap.dedent(f"""
        import json, sys
        from rlreason import skills
        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024
        skills.SHARD_BYTES = 16 << 20
        before = hwm()
        skills.extract({str(tmp_path / 'base')!r}, {str(tmp_path / 'tuned')!r}, {str(tmp_path / 'v')!r})
        skills.apply({str(tmp_path / 'base')!r}, {str(tmp_path / 'v')!r}, {str(tmp_path / 'out')!r})
        print(json.dumps({{"grew_mb": hwm() - before}}))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    grew = json.loads(res.stdout.strip().splitlines()[-1])["grew_mb"]
    print(f"model {size_mb:.0f} MB; peak memory grew {grew:.0f} MB")
    assert size_mb > 140 and grew < size_mb


def test_cli_extract_apply_inspect(pair, tmp_path, capsys):
    from rlreason.cli import main

    base, tuned = pair
    assert main(["skill", "extract", "--base", str(base), "--tuned", str(tuned),
                 "--out", str(tmp_path / "v")]) == 0
    assert main(["skill", "apply", "--model", str(base), "--vector", str(tmp_path / "v"),
                 "--out", str(tmp_path / "m"), "--scale", "1.0"]) == 0
    assert all(torch.equal(a, _weights(tmp_path / "m")[k]) for k, a in _weights(tuned).items())
    assert main(["skill", "inspect", str(tmp_path / "v"), str(tmp_path / "v")]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 2)[-1])["cosine"] == pytest.approx(1.0)
    tok = char_tokenizer()
    tiny_llama(tok, 1, 32, 64, 2, seed=0).save_pretrained(tmp_path / "other")
    assert main(["skill", "apply", "--model", str(tmp_path / "other"), "--vector",
                 str(tmp_path / "v"), "--out", str(tmp_path / "x")]) == 2
    assert "num_hidden_layers 2 (vector) vs 1 (model)" in capsys.readouterr().err


def test_eval_with_a_skill_vector_in_memory_equals_the_tuned_model(pair, tmp_path):
    from rlreason.cli import main

    base, tuned = pair
    char_tokenizer().save_pretrained(tuned)
    skills.extract(base, tuned, tmp_path / "v")
    bench = tmp_path / "b.jsonl"
    bench.write_text("".join(json.dumps({"prompt": f"{a}+{a}=", "answer": str(2 * a)}) + "\n"
                             for a in range(4)))
    common = ["eval", "--benchmark", str(bench), "--problem-key", "prompt", "--answer-key", "answer",
              "--n", "2", "--temperature", "1.0", "--max-new-tokens", "6", "--seed", "3",
              "--template", "plain"]
    assert main([*common, "--model", str(tuned), "--output", str(tmp_path / "t")]) == 0
    assert main([*common, "--model", str(base), "--skill", str(tmp_path / "v"),
                 "--output", str(tmp_path / "s")]) == 0
    rows_t = [json.loads(r) for r in (tmp_path / "t" / "samples.jsonl").read_text().splitlines()]
    rows_s = [json.loads(r) for r in (tmp_path / "s" / "samples.jsonl").read_text().splitlines()]
    assert [r["completions"] for r in rows_t] == [r["completions"] for r in rows_s]


def test_recipe_skill_list_is_applied_when_the_model_loads(pair, tmp_path):
    from rlreason.config import load_config
    from rlreason.models import load_policy
    from rlreason.tiny import resolve_model_path

    base, tuned = pair
    char_tokenizer().save_pretrained(tuned)
    skills.extract(base, tuned, tmp_path / "v")
    cfg = load_config(None, [f"model.name_or_path={base}",
                             f"model.skills=[{{path: {tmp_path / 'v'}, scale: 1.0}}]"])
    model, _ = load_policy(resolve_model_path(cfg.model, cfg.data.synthetic, log=lambda s: None), cfg.model)
    want = _weights(tuned)
    for k, p in model.state_dict().items():
        if k in want:
            assert torch.equal(p, want[k]), k


def _random_adapter(base, folder, **lora_kwargs):
    """A peft adapter on `base` whose B factors are random (a trained-looking delta)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(**lora_kwargs))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "lora_magnitude" in n:
                p.normal_(0, 0.1)
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_rank_and_alpha_patterns_give_each_module_its_own_scaling(pair, tmp_path, rslora):
    base, _ = pair
    model = _random_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, use_rslora=rslora,
                            target_modules=["q_proj", "v_proj", "down_proj"],
                            rank_pattern={"down_proj": 2}, alpha_pattern={"q_proj": 32})
    m = skills.extract(base, tmp_path / "adapter", tmp_path / "v")
    ranks = {k.split(".")[-2]: e["rank"] for k, e in m["tensors"].items()}
    assert ranks == {"q_proj": 4, "v_proj": 4, "down_proj": 2}
    skills.apply(base, tmp_path / "v", tmp_path / "out")
    merged = model.merge_and_unload().state_dict()
    got = _weights(tmp_path / "out")
    for k, v in got.items():
        assert torch.allclose(v, merged[k], atol=1e-6), k


@pytest.mark.parametrize("field,kwargs", [
    ("use_dora", {"use_dora": True}),
    ("modules_to_save", {"modules_to_save": ["lm_head"]}),
])
def test_adapters_that_are_not_scaled_b_a_are_refused_by_field(pair, tmp_path, field, kwargs):
    base, _ = pair
    _random_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj"], **kwargs)
    with pytest.raises(skills.SkillError, match=f"adapter_config.json sets {field}="):
        skills.extract(base, tmp_path / "adapter", tmp_path / "v")
    assert not (tmp_path / "v").exists() and not (tmp_path / "v.tmp").exists()


def test_a_dora_adapter_merged_first_extracts_exactly(pair, tmp_path):
    """The way around a refusal: merge-adapter (peft's own merge), then a full vector."""
    from rlreason.cli import main

    base, _ = pair
    model = _random_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, use_dora=True,
                            target_modules=["q_proj", "down_proj"])
    assert main(["skill", "merge-adapter", "--adapter", str(tmp_path / "adapter"), "--base-model",
                 str(base), "--out", str(tmp_path / "merged")]) == 0
    want = model.merge_and_unload().state_dict()
    got = _weights(tmp_path / "merged")
    assert all(torch.equal(v, want[k]) for k, v in got.items())
    assert (tmp_path / "merged" / "tokenizer_config.json").is_file()  # the base's tokenizer came along
    skills.extract(base, tmp_path / "merged", tmp_path / "v")
    skills.apply(base, tmp_path / "v", tmp_path / "out")
    assert all(torch.equal(v, got[k]) for k, v in _weights(tmp_path / "out").items())


def test_apply_to_an_adapter_folder_merges_it_into_its_base_first(pair, tmp_path):
    base, tuned = pair
    skills.extract(base, tuned, tmp_path / "v")
    model = _random_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj"])
    model.merge_and_unload().save_pretrained(tmp_path / "merged")
    skills.apply(tmp_path / "merged", tmp_path / "v", tmp_path / "want", scale=0.5)
    skills.apply(tmp_path / "adapter", tmp_path / "v", tmp_path / "got", scale=0.5, base_model=base)
    want, got = _weights(tmp_path / "want"), _weights(tmp_path / "got")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert not (tmp_path / "got.merged-base").exists()
