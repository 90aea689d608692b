"""Sharded training (FSDP, DeepSpeed ZeRO) as the RL loop sees it: whole weights gathered
for rollouts, the transformers backend's inference copy kept in step, DeepSpeed configs
checked against the recipe, micro-batch boundaries, checkpoints through accelerate's
save_state. accelerate runs FSDP and DeepSpeed on GPUs only; the two-process FSDP2 test
shards with torch's fully_shard on CPU (gloo) directly."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from rlreason import sharding
from rlreason.checkpoint import list_checkpoints
from rlreason.config import load_config
from rlreason.sharding import accumulation_boundary, check_deepspeed_config, gathered_parameters, inference_copy
from rlreason.tiny import char_tokenizer, tiny_llama
from rlreason.trainer import build_run, rl_step, sync_weights, train

ROOT = Path(__file__).resolve().parents[1]


def _ds_acc(ds: dict, world: int = 2):
    plugin = SimpleNamespace(deepspeed_config=ds, zero_stage=ds.get("zero_optimization", {}).get("stage", 2))
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=world,
                           distributed_type="DEEPSPEED")


def test_deepspeed_config_auto_fields_come_from_the_recipe():
    cfg = load_config(None, ["train.micro_batch_size=4", "train.max_grad_norm=0.5"])
    ds = {"gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
          "train_micro_batch_size_per_gpu": "auto"}
    check_deepspeed_config(_ds_acc(ds, world=8), cfg)
    assert ds == {"gradient_accumulation_steps": 1, "gradient_clipping": 0.5,
                  "train_micro_batch_size_per_gpu": 4, "train_batch_size": 32}


@pytest.mark.parametrize("key,value,match", [
    ("gradient_accumulation_steps", 4, "gradient_accumulation_steps=4; expected 1"),
    ("gradient_clipping", 1.0, "gradient_clipping=1.0 but train.max_grad_norm=0.5"),
    ("train_micro_batch_size_per_gpu", 2, "train_micro_batch_size_per_gpu=2 but train.micro_batch_size=4"),
])
def test_deepspeed_config_that_disagrees_with_the_recipe_names_both(key, value, match):
    cfg = load_config(None, ["train.micro_batch_size=4", "train.max_grad_norm=0.5"])
    with pytest.raises(ValueError, match=match):
        check_deepspeed_config(_ds_acc({key: value}), cfg)


@pytest.mark.parametrize("name", ["zero2", "zero3"])
@pytest.mark.parametrize("recipe", ["grpo_full_gsm8k", "grpo_lora_gsm8k"])
def test_shipped_deepspeed_configs_agree_with_the_gpu_recipes(name, recipe):
    ds = yaml.safe_load((ROOT / "configs" / "accelerate" / f"{name}.yaml").read_text())["deepspeed_config"]
    ds = {k: v for k, v in ds.items() if k in ("gradient_accumulation_steps", "gradient_clipping")}
    check_deepspeed_config(_ds_acc(ds), load_config(ROOT / "recipes" / f"{recipe}.yaml"))


def test_zero3_config_loads_whole_weights_for_the_rollout_copy():
    ds = yaml.safe_load((ROOT / "configs" / "accelerate" / "zero3.yaml").read_text())["deepspeed_config"]
    fsdp = yaml.safe_load((ROOT / "configs" / "accelerate" / "fsdp2.yaml").read_text())["fsdp_config"]
    assert ds["zero3_init_flag"] is False and fsdp["fsdp_cpu_ram_efficient_loading"] is False


def test_deepspeed_steps_only_on_the_last_micro_batch():
    state = {"sync": True}
    acc = _ds_acc({})
    acc.gradient_state = SimpleNamespace(_set_sync_gradients=lambda v: state.update(sync=v))
    seen = []
    for i in range(3):
        with accumulation_boundary(acc, None, is_last=i == 2):
            seen.append(state["sync"])  # what accelerator.backward passes to DeepSpeed
    assert seen == [False, False, True] and state["sync"] is True


def test_ddp_skips_gradient_sync_until_the_last_micro_batch():
    calls = []

    class Acc:
        distributed_type, num_processes = "MULTI_CPU", 2

        def no_sync(self, model):
            calls.append(model)
            return torch.no_grad()

    for i in range(3):
        with accumulation_boundary(Acc(), "m", is_last=i == 2):
            pass
    assert calls == ["m", "m"]


def _plain_acc():
    return SimpleNamespace(distributed_type="NO", num_processes=1, device=torch.device("cpu"),
                           unwrap_model=lambda m: m)


def test_gathered_parameters_unsharded_are_the_parameters_and_lora_only_the_adapter():
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(char_tokenizer(), 2, 64, 128, 4, seed=0)
    got = dict(gathered_parameters(model, _plain_acc()))
    assert got.keys() == dict(model.named_parameters()).keys()
    assert all(torch.equal(got[n], p) for n, p in model.named_parameters())
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    names = [n for n, _ in gathered_parameters(lora, _plain_acc(), trainable_only=True)]
    assert names and all("lora_" in n for n in names)
    assert len(names) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)


def test_inference_copy_is_detached_and_refuses_lazily_loaded_weights():
    model = tiny_llama(char_tokenizer(), 2, 64, 128, 4, seed=0)
    twin = inference_copy(model, _plain_acc())
    assert all(not p.requires_grad for p in twin.parameters())
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert not torch.equal(next(model.parameters()), next(twin.parameters()))
    with torch.device("meta"):
        lazy = tiny_llama(char_tokenizer(), 1, 64, 128, 4, seed=0)
    with pytest.raises(ValueError, match="fsdp_cpu_ram_efficient_loading: false"):
        inference_copy(lazy, _plain_acc())


@pytest.mark.parametrize("lora", [False, True])
def test_inference_copy_follows_the_policy_after_each_step(tiny_recipe, monkeypatch, lora):
    """What sharded training does with the transformers backend, on one process: the
    engine samples from a copy, and sync_weights makes it equal to the trained policy."""
    monkeypatch.setattr("rlreason.trainer.shards_parameters", lambda acc: True)
    extra = ["model.lora.enabled=true", "model.lora.r=4"] if lora else []
    signal = "rewards=[{name: format, kwargs: {pattern: '1'}}]"  # non-zero advantages, any seed
    run = build_run(tiny_recipe(*extra, signal, "train.learning_rate=1e-2", "algo.skip_zero_advantage=false"),
                    log=lambda s: None)
    assert not run.engine.shares_module and run.engine.model is not run.policy
    for _ in range(2):
        rl_step(run)
        twin = dict(run.engine.model.named_parameters())
        stale = max(float((twin[n] - p.detach()).abs().max()) for n, p in run.policy.named_parameters())
        assert stale > 0  # the step moved the policy; the copy has not seen it yet
        sync_weights(run)
        twin = dict(run.engine.model.named_parameters())
        assert all(torch.equal(twin[n], p) for n, p in run.policy.named_parameters())


def test_sharded_checkpoint_resumes_exactly(tiny_recipe, tmp_path, monkeypatch):
    """FSDP / DeepSpeed checkpoints go through accelerate's save_state; the single-process
    run exercises the same files and the same resume."""
    monkeypatch.setattr("rlreason.trainer.native_checkpoint", lambda acc: True)
    extra = ["train.save_steps=2", "algo.beta=0.02"]
    train(tiny_recipe(*extra, f"train.output_dir={tmp_path / 'full'}"), log=lambda s: None)
    part = tmp_path / "part"
    train(tiny_recipe(*extra, f"train.output_dir={part}"), log=lambda s: None, stop_after=3)
    ckpt = list_checkpoints(part)[-1]
    assert (ckpt / "accelerate").is_dir() and not (ckpt / "optimizer.pt").exists()
    train(tiny_recipe(*extra, f"train.output_dir={part}", "train.resume_from=latest"), log=lambda s: None)
    rows = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (tmp_path / "full", part)]
    full, resumed = ([r for r in rs if "reward" in r] for rs in rows)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full, resumed):
        for key in ("reward", "loss", "kl", "grad_norm", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)
    assert (part / "final" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_fsdp2_two_processes_gather_whole_weights_into_the_rollout_copy(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    worker = ROOT / "tests" / "dist" / "fsdp2_worker.py"
    res = subprocess.run(["torchrun", "--nproc_per_node", "2", "--standalone", str(worker),
                          str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "fsdp2.json").read_text())
    assert out["world"] == 2 and out["sharded_params"] > 0  # parameters really were split
    assert out["max_weight_diff"] < 1e-5  # gathered == the same step taken unsharded
    assert out["names_match"] and out["same_tokens"]
    assert out["max_logprob_diff"] < 1e-4
    assert out["lora_names_match"] and out["lora_max_diff"] == 0.0  # the adapter alone, whole


def test_strategy_names():
    assert sharding.strategy(_plain_acc()) == "single"
    assert sharding.strategy(_ds_acc({"zero_optimization": {"stage": 3}})) == "zero3"
    fsdp = SimpleNamespace(distributed_type="FSDP", is_fsdp2=True, num_processes=2)
    assert sharding.strategy(fsdp) == "fsdp2" and sharding.shards_parameters(fsdp)
    assert not sharding.shards_parameters(_ds_acc({"zero_optimization": {"stage": 2}}))
    assert sharding.native_checkpoint(_ds_acc({"zero_optimization": {"stage": 2}}))


def test_bf16_rollouts_sample_from_a_refreshed_copy_and_report_the_mismatch(tiny_recipe):
    """rollout.dtype=bfloat16: float32 training, sampling from a bf16 copy synced every
    step; the sampler/trainer log-prob gap is measured and importance-corrected."""
    run = build_run(tiny_recipe("rollout.dtype=bfloat16", "algo.skip_zero_advantage=false",
                                "rewards=[{name: format, kwargs: {pattern: '1'}}]"), log=lambda s: None)
    assert not run.engine.shares_module
    assert next(run.engine.model.parameters()).dtype == torch.bfloat16
    assert next(run.policy.parameters()).dtype == torch.float32
    for _ in range(2):
        m = rl_step(run)
        assert 0 < m["logprob_diff_mean"] < 0.1 and "is_weight_mean" in m
        sync_weights(run)
        twin = dict(run.engine.model.named_parameters())
        assert all(torch.equal(twin[n], p.detach().to(torch.bfloat16)) for n, p in run.policy.named_parameters())
