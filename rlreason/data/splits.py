"""A recipe's training problems and held-out problems, from whichever source it names."""
from __future__ import annotations

import random

from ..types import Problem
from .loaders import FieldMap, load_problems
from .reasoning_gym import is_reasoning_gym, reasoning_gym_splits
from .synthetic import synthetic_splits


def load_splits(d, seed: int) -> tuple[list[Problem], list[Problem]]:
    """(train, held out) for the recipe's `data` section: a synthetic task, a reasoning-gym
    task, or files/hub datasets with a held-out source or a seeded `eval_fraction` split."""
    if d.source == "synthetic":
        return synthetic_splits(d.synthetic)
    if is_reasoning_gym(d.source):
        return reasoning_gym_splits(d.source, d.reasoning_gym)
    fields = FieldMap.from_settings(d)
    train = load_problems(d.source, fields, split=d.split, limit=d.limit)
    if d.eval_source:
        return train, load_problems(d.eval_source, fields, split=d.eval_split)
    if d.eval_fraction <= 0:
        return train, []
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    k = max(1, int(len(train) * d.eval_fraction))
    keep = set(order[k:])
    return [p for i, p in enumerate(train) if i in keep], [train[i] for i in order[:k]]
