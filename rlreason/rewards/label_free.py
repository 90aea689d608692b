"""Rewards without labels: a completion is scored against its own group.

`majority_vote` (TTRL-style): the group's most common answer is the pseudo-label; a
completion earns 1 when its answer is that one. `urpa` (URPA, arXiv 2508.06317, as
PAPERS.md summarises it: the mean of a group's answers is the pseudo-label and the group's
spread gives a confidence that weights the rewards): for numeric answers the pseudo-label
is the group mean rounded to the answers' precision, and a completion that hits it earns
the confidence 1 / (1 + std / (|mean| + 1)) instead of 1, so a group that disagrees with
itself teaches less. The exact confidence function is our reading: the paper's text was
not available here. Both are group rewards (`scope = "group"`): they need a prompt's
completions together, so they train but do not grade held-out problems (`eval.reward`).
"""
from __future__ import annotations

import math
import re
import statistics
from collections import Counter

from rlreason.rewards.basic import _normalize_ws
from rlreason.rewards.extract import extract_answer
from rlreason.rewards.registry import register_reward
from rlreason.types import Problem

__all__ = ["majority_vote_reward", "urpa_reward"]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _answer(completion: str) -> str | None:
    """What a grader would compare: the stated answer, else the whole (trimmed) completion."""
    stated = extract_answer(completion)
    text = _normalize_ws(stated if stated is not None else completion)
    return text or None


@register_reward("majority_vote")
def majority_vote_reward(completions: list[str], problem: Problem) -> list[float]:
    answers = [_answer(c) for c in completions]
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return [0.0] * len(completions)
    top = max(votes.values())
    label = next(a for a in answers if a is not None and votes[a] == top)  # ties: the first seen
    return [1.0 if a == label else 0.0 for a in answers]


majority_vote_reward.scope = "group"


def _number(answer: str | None) -> float | None:
    if answer is None or not _NUMBER.fullmatch(answer):
        return None
    return float(answer)


@register_reward("urpa")
def urpa_reward(completions: list[str], problem: Problem) -> list[float]:
    answers = [_answer(c) for c in completions]
    values = [_number(a) for a in answers]
    numbers = [v for v in values if v is not None]
    if not numbers:
        return [0.0] * len(completions)
    mean = statistics.fmean(numbers)
    spread = statistics.pstdev(numbers) if len(numbers) > 1 else 0.0
    decimals = max((len(a.split(".")[1]) if a and "." in a else 0) for a, v in zip(answers, values) if v is not None)
    label = round(mean, decimals)
    confidence = 1.0 / (1.0 + spread / (abs(mean) + 1.0))
    return [confidence if v is not None and math.isclose(v, label, abs_tol=10 ** -decimals / 2) else 0.0
            for v in values]


urpa_reward.scope = "group"
