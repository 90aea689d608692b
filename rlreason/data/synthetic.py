"""Synthetic reasoning tasks with exact oracle solutions and a difficulty knob.

Addition, with the sum written least-significant digit first ("47+85=" -> "231"). The
format is chosen deliberately: a model writing digits in the order the carry propagates
computes each digit from the two operand digits and the previous carry, so a tiny model
warm-started for a minute gets a non-trivial, non-saturated success rate and GRPO has
signal. Written in the usual order, the first digit depends on every carry, the tiny
model stays near 5% after SFT, and RL barely moves it (measured; see README).

Difficulty = digits per operand; `carries` filters problems by where carries happen (none,
some, only out of the lowest column, only out of the highest). A model warm-started without
some kind of carry never solves problems that need it, which is what guided exploration
(POPE) needs; every digit of the oracle solution is exact, so a prefix of it is a valid hint.
"""
from __future__ import annotations

import random

from ..types import Problem


def addition_answer(a: int, b: int) -> str:
    """The sum written least-significant digit first."""
    return str(a + b)[::-1]


def carry_columns(a: int, b: int) -> list[bool]:
    """For each column of a + b, least significant first: does it carry out?"""
    out, carry = [], 0
    while a or b:
        s = a % 10 + b % 10 + carry
        carry = int(s >= 10)
        out.append(bool(carry))
        a, b = a // 10, b // 10
    return out


CARRY_FILTERS = {
    "any": lambda cols: True,
    "none": lambda cols: not any(cols),
    "some": lambda cols: any(cols),
    # exactly one carry, out of the lowest column / out of the highest column only
    "units_only": lambda cols: len(cols) > 1 and cols[0] and not any(cols[1:]),
    "top_only": lambda cols: len(cols) > 1 and cols[-1] and not any(cols[:-1]),
    "not_units": lambda cols: not (cols and cols[0]),  # the lowest column never carries
}


def make_addition(rng: random.Random, digits: int, index: int, prefix: str,
                  carries: str = "any", operator: str = "+") -> Problem:
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    while True:
        a, b = rng.randint(lo, 10**digits - 1), rng.randint(lo, 10**digits - 1)
        if CARRY_FILTERS[carries](carry_columns(a, b)):
            break
    answer = addition_answer(a, b)
    return Problem(
        id=f"{prefix}-{index}",
        prompt=f"{a}{operator}{b}=",
        answer=answer,
        solution=answer,
        metadata={"level": digits, "a": a, "b": b},
    )


def synthetic_problems(
    task: str,
    num: int,
    difficulty: int,
    seed: int,
    *,
    min_difficulty: int | None = None,
    split: str = "train",
    exclude: set[str] | None = None,
    carries: str = "any",
    allow_fewer: bool = False,
    operator: str = "+",
) -> list[Problem]:
    """`num` distinct problems; `exclude` holds prompts that must not appear (held-out).
    With `allow_fewer`, a level with fewer distinct problems than `num` gives them all."""
    if task != "addition":
        raise ValueError(f"data.synthetic.task: unknown task {task!r}; expected 'addition'")
    rng = random.Random(f"{task}-{split}-{seed}")
    levels = list(range(min_difficulty or difficulty, difficulty + 1))
    seen = set(exclude or ())
    out: list[Problem] = []
    tries = 0
    while len(out) < num:
        tries += 1
        if tries > 50 * num + 1000:
            if allow_fewer and out:
                return out
            raise ValueError(
                f"data.synthetic: cannot draw {num} distinct problems at difficulty "
                f"{levels}; lower num_train/num_eval or raise difficulty"
            )
        p = make_addition(rng, rng.choice(levels), len(out), f"{task}-{split}", carries, operator)
        if p.prompt in seen:
            continue
        seen.add(p.prompt)  # type: ignore[arg-type]
        out.append(p)
    return out


def synthetic_splits(cfg) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out) for a `SyntheticConfig`; held-out prompts never occur in train."""
    held = synthetic_problems(
        cfg.task, cfg.num_eval, cfg.difficulty, cfg.seed,
        min_difficulty=cfg.min_difficulty, split="eval", carries=cfg.carries,
        operator=cfg.operator,
    )
    train = synthetic_problems(
        cfg.task, cfg.num_train, cfg.difficulty, cfg.seed,
        min_difficulty=cfg.min_difficulty, split="train", exclude={p.prompt for p in held},
        carries=cfg.carries, operator=cfg.operator,
    )
    return train, held
