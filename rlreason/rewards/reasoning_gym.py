"""The `reasoning_gym` reward: a reasoning-gym task's own scorer (`score_answer`) on the answer
in a completion, for problems from `data.source: reasoning_gym:<task>` (data/reasoning_gym.py).

Why the task's scorer and not `exact_match`: many tasks accept more than one form (a graph
colouring, a sorted list with other spacing, partial credit), and their authors wrote that
rule once; using it keeps rewards the ones the task was published with.

`extract` picks the answer out of the completion: `auto` (default) reads the last
`<answer>...</answer>` when the completion has one (reasoning-gym's convention for models
that reason first) and the whole stripped completion otherwise; `answer_tag` requires the
tag (none: 0); `none` scores the completion as it is.
"""
from __future__ import annotations

from rlreason.rewards.registry import register_reward
from rlreason.types import Problem

EXTRACT = ("auto", "answer_tag", "none")


def _answer(completion: str, extract: str) -> str | None:
    from reasoning_gym.utils import extract_answer  # lazily: optional package (the reasoning-gym extra)

    if extract not in EXTRACT:
        raise ValueError(f"rewards[].kwargs.extract: {extract!r}; expected one of {list(EXTRACT)}")
    if extract == "none":
        return completion
    if extract == "answer_tag" or "<answer>" in completion:
        return extract_answer(completion, tag_name="answer")
    return completion.strip()


@register_reward("reasoning_gym")
def reasoning_gym_reward(completion: str, problem: Problem, extract: str = "auto") -> float:
    entry = (problem.metadata or {}).get("reasoning_gym")
    if entry is None:
        raise ValueError(f"reward 'reasoning_gym' scores problems of data.source reasoning_gym:<task>; "
                         f"problem {problem.id!r} did not come from reasoning-gym")
    import reasoning_gym  # lazily: optional package (the reasoning-gym extra)

    answer = _answer(completion, extract)
    if answer is None:
        return 0.0
    score = reasoning_gym.get_score_answer_fn(entry["metadata"]["source_dataset"])
    return float(score(answer=answer, entry=entry))
