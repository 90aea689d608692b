"""Simple string rewards: exact match and format compliance.

`exact_match_reward` suits tasks whose answers are labels or strings where symbolic
equivalence means nothing (multiple choice, names). `format_reward` is a small shaping
term that pays for stating an answer in the parseable form (``\\boxed{}`` by default), so
early in training the policy learns to produce something the correctness reward can read.
"""
from __future__ import annotations

import re

from rlreason.rewards.extract import extract_answer
from rlreason.rewards.registry import register_reward
from rlreason.types import Problem

__all__ = ["exact_match_reward", "format_reward"]

_WS_RE = re.compile(r"\s+")


def _normalize_ws(text: str) -> str:
    return _WS_RE.sub(" ", text).strip()


@register_reward("exact_match")
def exact_match_reward(completion: str, problem: Problem, *, strip: bool = True) -> float:
    """1.0 if the completion's answer equals ``problem.answer`` as a string, else 0.0.

    The answer is `extract_answer`'s result when it finds one, else the whole completion
    (a model asked for just the answer). With `strip` (the default) runs of whitespace
    collapse to one space and the ends are trimmed before comparing; without it the
    strings must match exactly.
    """
    extracted = extract_answer(completion)
    candidates = [completion] if extracted is None else [extracted, completion]
    gold = problem.answer
    if strip:
        gold = _normalize_ws(gold)
        candidates = [_normalize_ws(c) for c in candidates]
    return 1.0 if gold in candidates else 0.0


@register_reward("format")
def format_reward(completion: str, problem: Problem, *, pattern: str = r"\\boxed\{") -> float:
    """1.0 if regex `pattern` occurs anywhere in the completion, else 0.0."""
    return 1.0 if re.search(pattern, completion) else 0.0


format_reward.label_free = True  # reads the completion alone
