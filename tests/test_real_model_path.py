"""The path a real run takes: from_pretrained on a local folder, a chat template, the GSM8K
file with a field mapping, the math reward, LoRA; driven by the shipped GSM8K recipes."""
from __future__ import annotations

from pathlib import Path

import pytest

from rlreason.config import load_config
from rlreason.logger import read_metrics
from rlreason.tiny import char_tokenizer
from rlreason.trainer import train

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    """A Qwen2-class model with a chat template, saved like a hub model."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("tiny-qwen")
    tok = char_tokenizer()
    tok.chat_template = CHAT
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("recipe", ["grpo_lora_gsm8k.yaml", "grpo_full_gsm8k.yaml",
                                    "pope_gsm8k.yaml"])
def test_gsm8k_recipe_runs_on_a_local_model(recipe, tiny_qwen, benchmarks_dir, tmp_path):
    extra = ["rollout.backend=hf", "guidance.probe_limit=4", "guidance.probe_k=2",
             "eval.n=2"] if recipe.startswith("pope") else []
    cfg = load_config(RECIPES / recipe, [*extra,
        f"model.name_or_path={tiny_qwen}", "model.dtype=float32", "train.mixed_precision=no",
        f"data.source={benchmarks_dir / 'gsm8k_train.jsonl'}", "data.limit=8",
        f"data.eval_source={benchmarks_dir / 'gsm8k_test.jsonl'}", "eval.num_problems=2",
        "rollout.max_completion_length=8", "algo.num_generations=2",
        "train.prompts_per_step=2", "train.max_steps=2", "train.micro_batch_size=4",
        f"train.output_dir={tmp_path}", "train.plot=false", "train.save_steps=0",
    ])
    last = train(cfg, log=lambda s: None)
    assert last["step"] == 2 and last["eval/accuracy"] == 0.0  # random model, real grader
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert all(r["completion_length"] <= 8 for r in rows if "reward" in r)
    saved = tmp_path / "final"
    if cfg.guidance.enabled:  # a random model solves nothing: every probed problem is hard
        import json

        verdicts = json.loads((tmp_path / "hardness.json").read_text())
        assert len(verdicts) == 4 and all(v["hard"] and v["hint"] for v in verdicts.values())
        assert rows[-1]["guided/frac_prompts"] == 0.5
    is_lora = cfg.model.lora.enabled
    assert (saved / "adapter_config.json").is_file() == is_lora
    assert (saved / "config.json").is_file() != is_lora


def test_chat_recipe_with_a_tokenizer_without_template_says_what_to_set(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2)).save_pretrained(
        tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "1+2=", "answer": "3"}\n')
    cfg = load_config(None, [f"model.name_or_path={tmp_path / 'm'}", f"data.source={data}",
                             "data.template=chat", f"train.output_dir={tmp_path / 'o'}",
                             "train.prompts_per_step=2", "algo.num_generations=2"])
    with pytest.raises(ValueError, match="template"):
        train(cfg, log=lambda s: None)


def test_otr_gsm8k_recipe_runs_on_a_local_model(tiny_qwen, benchmarks_dir, tmp_path):
    from rlreason.sft import train_sft

    cfg = load_config(RECIPES / "otr_gsm8k.yaml", [
        f"model.name_or_path={tiny_qwen}", "train.mixed_precision=no",
        f"data.source={benchmarks_dir / 'gsm8k_train.jsonl'}", "data.limit=8",
        f"data.eval_source={benchmarks_dir / 'gsm8k_test.jsonl'}", "eval.num_problems=2",
        "rollout.max_completion_length=8", "train.prompts_per_step=4", "train.max_steps=2",
        "train.micro_batch_size=2", f"train.output_dir={tmp_path}", "train.plot=false",
    ])
    last = train_sft(cfg, log=lambda s: None)
    assert last["step"] == 2 and -0.1 <= last["reward"] <= 1  # R is 1 or beta
    assert last["eval/accuracy"] == 0.0
