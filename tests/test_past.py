"""The PaST pipeline end to end on a tiny model, one and two rounds."""
from __future__ import annotations

import json

import pytest

from rlreason.config import load_config


@pytest.mark.parametrize("rounds", [1, 2])
def test_past_pipeline_writes_every_stage_and_evaluates_both_models(tmp_path, rounds):
    from rlreason.past import run_past

    cfg = load_config(None, [
        *[f"{k}={v}" for k, v in {
            "model.tiny.num_layers": 2, "model.tiny.hidden_size": 64, "model.tiny.intermediate_size": 128,
            "model.tiny.warmstart_steps": 150, "model.tiny.warmstart_lr": 3e-3}.items()],
        "rewards=[{name: exact_match}]", "rollout.max_completion_length=6", "algo.num_generations=4",
        "train.prompts_per_step=4", "train.micro_batch_size=8", "train.learning_rate=1e-3",
        "train.plot=false", "eval.num_problems=8", f"train.output_dir={tmp_path / 'past'}",
        "past.source_data={source: synthetic, synthetic: {num_train: 64, num_eval: 0}}",
        "past.target_data={source: synthetic, synthetic: {operator: '&', num_train: 64, num_eval: 8}}",
        "past.source_sft_steps=2", "past.rl_steps=2", "past.target_sft_steps=2", f"past.rounds={rounds}",
    ])
    results = run_past(cfg, log=lambda s: None)
    out = tmp_path / "past"
    for k in range(1, rounds + 1):
        assert (out / f"round{k}" / "skill" / "manifest.json").is_file()
        assert (out / f"round{k}" / "rl" / "metrics.jsonl").is_file()
    if rounds == 2:  # round 2's RL starts from its SFT model plus round 1's vector
        cfg2 = (out / "round2" / "rl" / "config.yaml").read_text()
        assert "round1/skill" in cfg2
    saved = json.loads((out / "past_results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for name in ("target_sft", "target_sft_plus_skill"):
        assert 0.0 <= saved[name]["eval/accuracy"] <= 1.0
    assert (out / "past_model" / "config.json").is_file()
