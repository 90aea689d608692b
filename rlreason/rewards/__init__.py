"""Reward functions for RL fine-tuning: answer extraction, verification, and the registry.

Importing this package registers the built-in rewards (``"math"``, ``"exact_match"``,
``"format"``, ``"reasoning_gym"``, ``"overlong"``, ``"majority_vote"``, ``"urpa"``) so that
`resolve_reward` and `RewardFunction` can find them by name.
"""
from __future__ import annotations

from rlreason.rewards import label_free as _label_free  # noqa: F401  (registers majority_vote, urpa)
from rlreason.rewards import overlong as _overlong  # noqa: F401  (registers overlong)
from rlreason.rewards import reasoning_gym as _reasoning_gym  # noqa: F401  (registers the reward)
from rlreason.rewards.basic import exact_match_reward, format_reward
from rlreason.rewards.extract import extract_answer, extract_boxed, gsm8k_gold
from rlreason.rewards.math import (
    answers_equivalent,
    gold_answer,
    math_equal,
    math_reward,
    normalize_answer,
)
from rlreason.rewards.registry import (
    RewardError,
    RewardFunction,
    RewardScores,
    check_timeout_fractions,
    compute_rewards,
    register_reward,
    registered_rewards,
    resolve_reward,
    rewards_from_config,
)

__all__ = [
    "RewardError",
    "RewardFunction",
    "RewardScores",
    "answers_equivalent",
    "check_timeout_fractions",
    "compute_rewards",
    "exact_match_reward",
    "extract_answer",
    "extract_boxed",
    "format_reward",
    "gold_answer",
    "gsm8k_gold",
    "math_equal",
    "math_reward",
    "normalize_answer",
    "register_reward",
    "registered_rewards",
    "resolve_reward",
    "rewards_from_config",
]
