"""`data.source: reasoning_gym:<task>`: problems from reasoning-gym's generator, scored by the
task's own scorer; splits disjoint and seeded; clear errors for a wrong task, config or a
missing package; a tiny model warm-started on the task trains on it."""
from __future__ import annotations

import json
import sys

import pytest

from rlreason.config import load_config
from rlreason.data.reasoning_gym import reasoning_gym_problems, reasoning_gym_splits
from rlreason.data.splits import load_splits
from rlreason.logger import read_metrics
from rlreason.rewards import RewardError, RewardFunction
from rlreason.trainer import train
from rlreason.types import Problem

pytest.importorskip("reasoning_gym", reason="the reasoning-gym extra (in .[dev])")

ARITH = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2, "operators": ["+", "-"],
         "allow_parentheses": False, "allow_negation": False}
RG = ["data.source=reasoning_gym:basic_arithmetic", f"data.reasoning_gym.config={json.dumps(ARITH)}"]


def test_splits_are_seeded_disjoint_and_carry_the_entry():
    cfg = load_config(None, [*RG, "data.reasoning_gym.size=300", "data.reasoning_gym.eval_size=50"])
    train_a, held_a = load_splits(cfg.data, cfg.train.seed)
    train_b, held_b = reasoning_gym_splits(cfg.data.source, cfg.data.reasoning_gym)
    assert [p.prompt for p in train_a] == [p.prompt for p in train_b]  # same seed, same problems
    assert len(train_a) == 300 and len(held_a) == 50
    prompts = {p.prompt for p in train_a}
    assert len(prompts) == 300 and not prompts & {p.prompt for p in held_a}
    p = train_a[0]
    expression = p.metadata["reasoning_gym"]["metadata"]["expression"]
    assert p.prompt.startswith("Calculate ") and p.answer == str(eval(expression))
    json.dumps(p.metadata)  # plain JSON: logged and checkpointed like any metadata
    other = load_config(None, [*RG, "data.reasoning_gym.size=300", "data.reasoning_gym.seed=7"])
    assert [q.prompt for q in load_splits(other.data, other.train.seed)[0]] != [q.prompt for q in train_a]


def test_the_reward_is_the_tasks_own_scorer():
    import reasoning_gym

    p = reasoning_gym_problems("basic_arithmetic", 1, seed=3, config=ARITH)[0]
    entry = p.metadata["reasoning_gym"]
    rf = RewardFunction("reasoning_gym")
    score = reasoning_gym.get_score_answer_fn("basic_arithmetic")
    for text in [p.answer, f" {p.answer}\n", "999", f"think... <answer>{p.answer}</answer>"]:
        want = score(answer=text.strip() if "<answer>" not in text else p.answer, entry=entry)
        assert rf(text, p) == want
    assert rf(p.answer, p) == 1.0 and rf("999", p) < 1.0
    assert RewardFunction("reasoning_gym", kwargs={"extract": "answer_tag"})(p.answer, p) == 0.0
    with pytest.raises(RewardError, match=r"did not come from reasoning-gym"):
        rf("2", Problem(id="x", prompt="1+1=", answer="2"))


def test_bad_task_config_or_missing_package_name_the_field(monkeypatch):
    with pytest.raises(ValueError, match=r"reasoning_gym:basic_arithmetik: no such task.*basic_arithmetic"):
        load_splits(load_config(None, ["data.source=reasoning_gym:basic_arithmetik"]).data, 0)
    with pytest.raises(ValueError, match=r"data.reasoning_gym.config for task 'basic_arithmetic'.*bogus"):
        load_splits(load_config(None, [*RG[:1], "data.reasoning_gym.config={bogus: 1}"]).data, 0)
    with pytest.raises(ValueError, match=r"name the task"):
        load_splits(load_config(None, ["data.source='reasoning_gym:'"]).data, 0)
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # as if not installed
    with pytest.raises(ValueError, match=r'not installed; `pip install -e ".\[reasoning-gym\]"`'):
        load_splits(load_config(None, RG).data, 0)


def test_a_tiny_model_warm_started_on_the_task_trains_on_it(tiny_recipe, tmp_path):
    cfg = tiny_recipe(*RG, "data.reasoning_gym.size=200", "data.reasoning_gym.eval_size=16",
                      "rewards=[{name: reasoning_gym}]", "train.max_steps=3")
    train(cfg, log=lambda s: None)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    rewards = [r["reward"] for r in rows if "reward" in r]
    assert len(rewards) == 3 and all(0.0 <= r <= 1.0 for r in rewards)
    assert "eval/accuracy" in rows[-1]
    from rlreason.tiny import tiny_model_path

    # its own warm start: the cache key holds the task, so the synthetic model is not reused
    assert tiny_model_path(cfg.model, cfg.data.synthetic, (cfg.data.source, cfg.data.reasoning_gym)) != \
        tiny_model_path(cfg.model, cfg.data.synthetic)
