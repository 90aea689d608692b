"""The README's quickstart, run as shipped: GRPO must visibly improve the tiny model.

The margins hold on any x86-64 CPU: measured (2-core AMD EPYC, AVX2 only; torch 2.13.0) over
train.seed 0 and 1, model.tiny.seed 1, and seed 0 with ATEN_CPU_CAPABILITY=default (another
rounding path): first-10 mean reward 0.29-0.42, last-10 0.69-0.90 (gain 0.40-0.48);
held-out greedy accuracy 0.44-0.62 at step 0, 0.89-1.00 at step 250 (gain 0.37-0.46).
The warm-start stops at a target sampled accuracy (0.3), so RL starts from the same
competence everywhere; before that, a fixed step count started it at 0.62 on an AVX-512 CPU
and 0.92 on an AVX2 one, leaving no room for the accuracy margin.
"""
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
    assert 0.15 < first < 0.55, first  # the warm-start's target pinned the starting point
    assert evals[0] < 0.75, evals
    assert last > first + 0.2, (first, last)
    assert evals[-1] > evals[0] + 0.2, evals
