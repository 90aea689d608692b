"""Rewards written for TRL's GRPOTrainer, used unchanged: TRL's own by `trl:NAME`, a user's
with `api: trl`; each scores exactly what TRL would score for the same completion."""
from __future__ import annotations

import textwrap

import pytest

from rlreason.logger import read_metrics
from rlreason.rewards import RewardError, RewardFunction
from rlreason.trainer import train
from rlreason.types import Problem

THIRD = Problem(id="p1", prompt="What is 1/3 as a fraction?", answer=r"\frac{1}{3}")


def test_trl_builtins_by_name_score_like_trl():
    from trl.rewards import accuracy_reward, think_format_reward

    acc = RewardFunction("trl:accuracy_reward")
    for text in [r"so \boxed{\frac{1}{3}}", r"so \boxed{\frac{1}{4}}"]:
        want = accuracy_reward([[{"role": "assistant", "content": text}]], [THIRD.answer])[0]
        assert acc(text, THIRD) == want
    assert acc(r"\boxed{\frac{1}{3}}", THIRD) == 1.0 and acc(r"\boxed{2}", THIRD) == 0.0
    fmt = RewardFunction("trl:think_format_reward")
    assert fmt("<think>\nhm\n</think>\nanswer", THIRD) == 1.0
    assert fmt("<think>\nhm\nanswer", THIRD) == 0.0
    assert think_format_reward([[{"content": "<think>\nhm\n</think>\nanswer"}]]) == [1.0]


def test_none_means_the_reward_does_not_apply_and_scores_zero():
    unparseable = Problem(id="p2", prompt="?", answer="no math here at all")
    assert RewardFunction("trl:accuracy_reward")(r"\boxed{1}", unparseable) == 0.0


def test_a_trl_factory_is_built_from_the_recipe_kwargs_and_checked():
    # built with the recipe's kwargs (a wrong one names the signature); the function it builds
    # reads token ids, which rlreason's text rewards do not have: refused at load, not mid-run
    with pytest.raises(RewardError, match=r"kwargs do not fit get_cosine_scaled_reward\(max_len"):
        RewardFunction("trl:get_cosine_scaled_reward", kwargs={"nope": 1})
    with pytest.raises(RewardError, match=r"'trl:get_cosine_scaled_reward' needs completion_ids"):
        RewardFunction("trl:get_cosine_scaled_reward", kwargs={"max_len": 50})


def test_rewards_that_need_token_ids_or_do_not_exist_are_refused_with_the_reason():
    with pytest.raises(RewardError, match=r"needs completion_ids"):
        RewardFunction("trl:get_soft_overlong_punishment",
                       kwargs={"max_completion_len": 64, "soft_punish_cache": 8})
    with pytest.raises(RewardError, match=r"trl.rewards has no function 'accuracy'.*accuracy_reward"):
        RewardFunction("trl:accuracy")
    with pytest.raises(RewardError, match=r"rewards\[\].api"):
        RewardFunction("exact_match", api="openrlhf")


USER_REWARDS = textwrap.dedent('''
    def digits_match(completions, answer, level, **kwargs):
        """Written for TRL's GRPOTrainer (standard, non-conversational data)."""
        return [float(c.strip() == a) + 0.0 * l for c, a, l in zip(completions, answer, level)]

    def one_per_batch(completions, **kwargs):
        return [1.0, 1.0]
''')


def test_a_users_trl_function_runs_unchanged_in_training(tiny_recipe, tmp_path, monkeypatch):
    (tmp_path / "my_trl_rewards.py").write_text(USER_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    rf = RewardFunction("my_trl_rewards:digits_match", api="trl", trl_completions="text")
    p = Problem(id="q", prompt="47+85=", answer="231", metadata={"level": 2})
    assert rf("231", p) == 1.0 and rf("132", p) == 0.0  # metadata columns arrive as keyword lists
    with pytest.raises(RewardError, match=r"one score per completion"):
        RewardFunction("my_trl_rewards:one_per_batch", api="trl")("x", p)
    # the whole path: a recipe naming it trains, and its reward is what exact_match gives
    train(tiny_recipe("train.max_steps=2",
                      "rewards=[{name: 'my_trl_rewards:digits_match', api: trl, trl_completions: text}]"),
          log=lambda s: None)
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "reward" in r]
    assert len(rows) == 2 and all(0.0 <= r["reward"] <= 1.0 for r in rows)
