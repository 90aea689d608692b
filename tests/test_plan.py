"""`rlreason plan`: parameter counts match real models; sharding divides; OOM is flagged."""
from __future__ import annotations

import pytest

from rlreason.config import load_config
from rlreason.plan import estimate, model_shape


def test_parameter_count_matches_a_real_llama(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    for tied in (True, False):
        cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
        real = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
        assert model_shape(cfg.to_dict()).params == real


def test_sharding_and_oom_warnings(tmp_path):
    from transformers import LlamaConfig

    # a ~1.2B model: 2 GiB of bf16 weights, 4.5 GiB of fp32 grads, 9 GiB of Adam moments
    LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                num_attention_heads=32, num_key_value_heads=4).save_pretrained(tmp_path / "m")
    cfg = load_config(None, [f"model.name_or_path={tmp_path / 'm'}", "model.dtype=bfloat16",
                             "train.micro_batch_size=4", "rollout.backend=vllm"])
    one = estimate(cfg, 1, 24.0, "ddp")
    eight = estimate(cfg, 8, 24.0, "zero3")
    assert one["params"] == pytest.approx(1.1e9, rel=0.05)
    assert eight["gib"]["optimizer"] == pytest.approx(one["gib"]["optimizer"] / 8)
    assert eight["gib"]["weights"] == pytest.approx(one["gib"]["weights"] / 8)
    assert not one["fits"] and "shard more" in one["warnings"][0]
    assert eight["total_gib"] < one["total_gib"]
    lora = estimate(load_config(None, [f"model.name_or_path={tmp_path / 'm'}", "model.lora.enabled=true",
                                       "model.dtype=bfloat16", "train.micro_batch_size=4"]), 1, 24.0, "ddp")
    assert lora["trainable"] < 0.05 * lora["params"] and lora["fits"]
    # sharded weights with the transformers rollout backend: each GPU also holds a whole copy
    hf = load_config(None, [f"model.name_or_path={tmp_path / 'm'}", "model.dtype=bfloat16"])
    z3 = estimate(hf, 8, 24.0, "zero3")
    assert z3["gib"]["rollout_copy"] == pytest.approx(one["gib"]["weights"])
    assert "rollout_copy" not in estimate(hf, 8, 24.0, "zero2")["gib"]


def test_cli_exit_code_says_whether_it_fits(capsys):
    from rlreason.cli import main

    assert main(["plan", "recipes/quickstart.yaml", "--gpu-memory", "8"]) == 0
    assert "total" in capsys.readouterr().out


@pytest.mark.parametrize("name,strategy", [("ddp", "ddp"), ("fsdp2", "fsdp2"), ("zero2", "zero2"),
                                           ("zero3", "zero3")])
def test_plan_reads_the_launch_config(name, strategy, capsys):
    from rlreason.cli import main
    from rlreason.plan import launch_layout

    path = f"configs/accelerate/{name}.yaml"
    assert launch_layout(path) == (strategy, 8)
    main(["plan", "recipes/quickstart.yaml", "--accelerate-config", path])
    out = capsys.readouterr().out
    assert f"{strategy} on 8 GPU(s)" in out


def test_plan_with_a_missing_launch_config_names_it(capsys):
    from rlreason.cli import main

    assert main(["plan", "recipes/quickstart.yaml", "--accelerate-config", "nope.yaml"]) == 2
    assert "--accelerate-config nope.yaml" in capsys.readouterr().err
