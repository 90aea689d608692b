"""DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13), a reward to add to others.

With L = max_length and C = buffer: 0 for completions of at most L - C tokens, a linear
ramp from 0 to -1 across the last C tokens, -1 beyond L. A truncated completion is often
cut mid-thought; the ramp teaches length before the hard cap does, without punishing
correct-but-long answers as harshly as a flat penalty. Set max_length to
rollout.max_completion_length.
"""
from __future__ import annotations

from rlreason.rewards.registry import register_reward
from rlreason.types import Problem

__all__ = ["overlong_reward"]


@register_reward("overlong")
def overlong_reward(completion: str, problem: Problem, completion_length: int | None = None, *,
                    max_length: int, buffer: int) -> float:
    if completion_length is None:
        raise ValueError("the overlong reward needs completion lengths in tokens (the trainer passes them)")
    if not 0 < buffer <= max_length:
        raise ValueError(f"overlong: need 0 < buffer <= max_length, got buffer {buffer}, max_length {max_length}")
    free = max_length - buffer
    if completion_length <= free:
        return 0.0
    if completion_length <= max_length:
        return (free - completion_length) / buffer
    return -1.0


overlong_reward.label_free = True  # reads the completion's length alone
