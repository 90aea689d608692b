"""The PaST pipeline end to end on a tiny model, one and two rounds."""
from __future__ import annotations

import json

import pytest

from rlreason.config import load_config
from rlreason.data.splits import load_splits


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


def _cheap(tmp_path, *overrides):
    """The pipeline on the tiny model in a few seconds a stage (as above)."""
    return load_config(None, [
        "model.tiny.num_layers=2", "model.tiny.hidden_size=64", "model.tiny.intermediate_size=128",
        "model.tiny.warmstart_steps=150", "model.tiny.warmstart_lr=3e-3",
        "rewards=[{name: exact_match}]", "rollout.max_completion_length=6", "algo.num_generations=4",
        "train.prompts_per_step=4", "train.micro_batch_size=8", "train.learning_rate=1e-3",
        "train.plot=false", "eval.num_problems=8", f"train.output_dir={tmp_path / 'past'}",
        "past.source_data={source: synthetic, synthetic: {num_train: 64, num_eval: 0}}",
        "past.target_data={source: synthetic, synthetic: {operator: '&', num_train: 64, num_eval: 8}}",
        "past.source_sft_steps=1", "past.rl_steps=1", "past.target_sft_steps=1", *overrides,
    ])


def _weights(folder):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_past_with_lora_merges_adapters_and_round_two_vector_is_the_whole_delta(tmp_path):
    """LoRA end to end, two rounds: every stage's adapter is merged where a full model is
    needed, and v_2 = theta_rl_2 - theta_sft_2 includes round 1's vector (round 2's RL
    started from theta_sft_2 + v_1; its adapter alone holds only round 2's change)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlreason import skills
    from rlreason.past import run_past

    cfg = _cheap(tmp_path, "model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8",
                 "past.rounds=2", "past.rl_steps=2",  # a reward that varies, so RL moves the weights
                 "rewards=[{name: exact_match}, {name: format, kwargs: {pattern: '^1'}}]")
    results = run_past(cfg, log=lambda s: None)
    out = tmp_path / "past"
    for name in ("target_sft", "target_sft_plus_skill"):
        assert 0.0 <= results[name]["eval/accuracy"] <= 1.0
    assert (out / "round2" / "rl" / "final" / "adapter_config.json").is_file()  # trained as LoRA
    theta_sft = out / "round2" / "source_sft" / "merged"
    # round 2's RL model, rebuilt here from its parts: theta_sft_2 + v_1, adapter merged in
    model = AutoModelForCausalLM.from_pretrained(theta_sft)
    skills.apply_in_memory(model, out / "round1" / "skill")
    rl = PeftModel.from_pretrained(model, out / "round2" / "rl" / "final").merge_and_unload().state_dict()
    skills.apply(theta_sft, out / "round2" / "skill", tmp_path / "v2_on_sft")
    got = _weights(tmp_path / "v2_on_sft")
    assert got.keys() <= rl.keys()
    for k, v in got.items():
        assert torch.allclose(v, rl[k], atol=1e-6), k
    v1 = dict(skills.vector_deltas(out / "round1" / "skill"))
    assert sum(float(d.norm()) for d in v1.values()) > 1e-3  # round 1 moved: its part is checked
    sft = _weights(theta_sft)
    assert any(not torch.allclose(got[k], sft[k]) for k in got)
    assert (out / "past_model" / "config.json").is_file() and (out / "target_sft" / "merged").is_dir()


def test_file_source_rounds_take_disjoint_slices(tmp_path):
    from rlreason.past import _part

    src = tmp_path / "source.jsonl"
    src.write_text("".join(json.dumps({"q": f"{a}+{a}=", "a": str(2 * a)}) + "\n" for a in range(11)))
    cfg = _cheap(tmp_path, f"past.source_data={{source: {src}, prompt_key: q, answer_key: a, "
                           "eval_fraction: 0.2}", "past.rounds=3")
    data = cfg.past.source_data
    train, held = load_splits(data, cfg.train.seed)
    parts = []
    for k in (1, 2, 3):
        d = _part(cfg, data, k, 3, tmp_path / "data" / f"round{k}")
        tr, he = load_splits(d, cfg.train.seed)
        assert [p.prompt for p in he] == [p.prompt for p in held]  # held-out rows stay out
        parts.append([(p.id, p.prompt, p.answer) for p in tr])
    assert all(len(p) in (2, 3) for p in parts)
    assert sum(parts, []) == [(p.id, p.prompt, p.answer) for p in train]  # disjoint, all rows, in order
    with pytest.raises(ValueError, match="fewer than one per round"):
        _part(cfg, data, 1, 10, tmp_path / "x")  # 9 training rows


def test_scale_is_picked_on_validation_rows_and_the_test_split_is_scored_once(tmp_path, monkeypatch):
    import torch

    from rlreason import past, sft, skills, trainer
    from rlreason.past import run_past

    calls = []
    real = trainer.evaluate

    def spy(run):  # records what each evaluation saw; validation scores made to prefer 0.5
        res = real(run)
        m = run.cfg.model
        scales = [s.scale for s in m.skills]
        calls.append({"dir": run.cfg.train.output_dir, "scales": scales,
                      "ids": {p.prompt for p in run.eval_problems}})
        if "validation_scale" in run.cfg.train.output_dir:
            res["eval/accuracy"] = {0.5: 0.6, 1.0: 0.4}.get(scales[0], 0.0) if scales else 0.2
        return res

    monkeypatch.setattr(trainer, "evaluate", spy)  # the training loops' evaluations
    monkeypatch.setattr(past, "evaluate", spy)  # the pipeline's own
    monkeypatch.setattr(sft, "evaluate", spy)  # the SFT stages'
    cfg = _cheap(tmp_path, "past.scales=[0, 0.5, 1]", "past.validation_fraction=0.25")
    results = run_past(cfg, log=lambda s: None)
    out = tmp_path / "past"
    saved = json.loads((out / "past_results.json").read_text())
    val = saved["validation"]
    assert [(r["scale"], r["eval/accuracy"]) for r in val["scales"]] == [(0, 0.2), (0.5, 0.6), (1, 0.4)]
    assert val["problems"] == 16 and saved["scale"] == results["scale"] == 0.5
    skills.apply(out / "target_sft" / "final", out / "round1" / "skill", tmp_path / "half", scale=0.5)
    want, got = _weights(tmp_path / "half"), _weights(out / "past_model")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    rows = lambda f: [json.loads(x) for x in (out / "data" / f).read_text().splitlines()]  # noqa: E731
    val_prompts = {r["prompt"] for r in rows("target_validation.jsonl")}
    train_prompts = {r["prompt"] for r in rows("target_train.jsonl")}
    assert len(val_prompts) == 16 and len(train_prompts) == 48 and not val_prompts & train_prompts
    assert "target_train.jsonl" in (out / "target_sft" / "config.yaml").read_text()
    test_prompts = {p.prompt for p in load_splits(cfg.past.target_data, cfg.train.seed)[1]}
    assert not test_prompts & (val_prompts | train_prompts)
    on_test = [c for c in calls if c["ids"] & test_prompts]
    assert [c["dir"] for c in on_test] == [str(out / "eval" / "target_sft"),
                                          str(out / "eval" / "target_sft_plus_skill")]
    assert all(c["ids"] <= test_prompts for c in on_test)
    assert all(c["ids"] <= val_prompts for c in calls if c not in on_test)  # SFT stages too
    assert [c["scales"] for c in calls if "validation_scale" in c["dir"]] == [[], [0.5], [1.0]]
