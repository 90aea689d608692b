"""The README's quickstart, run as shipped: GRPO must visibly improve the tiny model."""
from __future__ import annotations

from pathlib import Path

import pytest

from rlreason.config import load_config
from rlreason.logger import read_metrics
from rlreason.trainer import train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


@pytest.mark.slow
def test_quickstart_reward_and_heldout_accuracy_rise(tmp_path):
    cfg = load_config(RECIPE, [f"train.output_dir={tmp_path}"])
    train(cfg, log=lambda s: None)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    rewards = [r["reward"] for r in rows if "reward" in r]
    evals = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    print(f"quickstart: reward first10={first:.3f} last10={last:.3f}; eval {evals}")
    assert len(rewards) == cfg.train.max_steps
    assert last > first + 0.15, (first, last)
    assert evals[-1] > evals[0] + 0.1, evals
