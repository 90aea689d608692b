"""The model card in final/: hub metadata, the run's numbers, the recipe."""
from __future__ import annotations

import yaml

from rlreason.logger import read_metrics
from rlreason.trainer import train


def test_final_holds_a_model_card_with_the_runs_own_numbers(tiny_recipe, tmp_path):
    train(tiny_recipe("train.max_steps=3", "eval.every_steps=2"), log=lambda s: None)
    out = tmp_path / "run"
    card = (out / "final" / "README.md").read_text(encoding="utf-8")
    head, _, body = card.removeprefix("---\n").partition("\n---\n")
    meta = yaml.safe_load(head)
    assert meta["library_name"] == "transformers" and "grpo" in meta["tags"]
    assert "base_model" not in meta  # a locally built model has no hub id to name
    rows = read_metrics(out / "metrics.jsonl")
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 2, 3]
    for r in evals:
        assert f"| {r['step']} | {r['eval/accuracy']:.3f} |" in body
    rewards = [r["reward"] for r in rows if "reward" in r]
    assert f"{sum(rewards) / 3:.3f} over the first 3 steps" in body
    recipe = yaml.safe_load(body.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert recipe["train"]["max_steps"] == 3  # the resolved recipe, every default filled in
