"""Procedural task suites from the reasoning-gym package: `data.source: reasoning_gym:<task>`.

Why reasoning-gym rather than more tasks of our own: it is the maintained collection RLVR
users train on (100+ generators: arithmetic, algebra, logic, graphs, games, ...), each with
a seeded generator, a difficulty config and its own scorer. rlreason turns its entries into
`Problem`s and scores completions with the task's own `score_answer` (the `reasoning_gym`
reward, rewards/reasoning_gym.py), so a task behaves here exactly as its authors defined it.

Splits: the held-out set (`eval_size`) and the training set (`size`) are drawn with different
seeds from the task's generator, and training drops every question the held-out set holds;
the tiny model's warm-start draws a third set (its own seed). The whole entry (question,
answer, metadata) travels in `Problem.metadata["reasoning_gym"]` for the scorer.

reasoning-gym is an optional extra (`pip install -e ".[reasoning-gym]"`): a recipe that names
it without the package stops before anything runs, with that command.
"""
from __future__ import annotations

import json
from typing import Any

from ..types import Problem

__all__ = ["PREFIX", "is_reasoning_gym", "reasoning_gym_problems", "reasoning_gym_splits", "task_of"]

PREFIX = "reasoning_gym:"
SPLIT_SEED_OFFSET = {"train": 0, "eval": 1_000_003, "warmstart": 2_000_003}


def is_reasoning_gym(source: str | None) -> bool:
    return bool(source) and source.startswith(PREFIX)


def task_of(source: str) -> str:
    task = source[len(PREFIX):].strip()
    if not task:
        raise ValueError(f"data.source {source!r}: name the task, e.g. 'reasoning_gym:basic_arithmetic'")
    return task


def _package():
    try:
        import reasoning_gym  # lazily: optional package (the reasoning-gym extra)
    except ImportError as e:
        raise ValueError("data.source reasoning_gym:...: the reasoning-gym package is not installed; "
                         "`pip install -e \".[reasoning-gym]\"` (or `pip install reasoning-gym`)") from e
    return reasoning_gym


def _jsonable(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as plain JSON values (some generators keep tuples or numpy numbers), so it can be
    logged and checkpointed like any metadata; the scorers read it back in this form."""
    return json.loads(json.dumps(entry, default=str))


def reasoning_gym_problems(task: str, n: int, *, seed: int, config: dict[str, Any] | None = None,
                           split: str = "train", exclude: set[str] | None = None) -> list[Problem]:
    """`n` distinct problems of `task` (fewer only if its generator cannot make that many)."""
    rg = _package()
    seen = set(exclude or ())
    out: list[Problem] = []
    size = n + len(seen) + 16
    for _attempt in range(4):  # duplicates and excluded questions are dropped: draw more if short
        try:
            dataset = rg.create_dataset(task, size=size, seed=seed + SPLIT_SEED_OFFSET[split], **(config or {}))
        except ValueError as e:
            if "not registered" in str(e):
                known = sorted(rg.factory.DATASETS)
                near = [k for k in known if task.lower()[:4] in k] or known[:12]
                raise ValueError(f"data.source reasoning_gym:{task}: no such task in reasoning-gym; "
                                 f"for example {near}") from e
            raise ValueError(f"data.reasoning_gym.config for task {task!r}: {e}") from e
        except TypeError as e:
            raise ValueError(f"data.reasoning_gym.config for task {task!r}: {e}") from e
        out, taken = [], set(seen)
        for i, entry in enumerate(dataset):
            q = entry["question"]
            if q in taken:
                continue
            taken.add(q)
            answer = str(entry["answer"])
            out.append(Problem(id=f"rg-{task}-{split}-{i}", prompt=q, answer=answer, solution=answer,
                               metadata={"reasoning_gym": _jsonable(entry)}))
            if len(out) == n:
                return out
        size *= 2
    return out


def reasoning_gym_splits(source: str, cfg) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out) for `data.source: reasoning_gym:<task>` and its `data.reasoning_gym`."""
    task = task_of(source)
    held = reasoning_gym_problems(task, cfg.eval_size, seed=cfg.seed, config=cfg.config, split="eval") \
        if cfg.eval_size else []
    train = reasoning_gym_problems(task, cfg.size, seed=cfg.seed, config=cfg.config, split="train",
                                   exclude={p.prompt for p in held})
    if not train:
        raise ValueError(f"data.source {source!r}: the generator made no training problems")
    return train, held
