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

Arithmetic skills (`data.synthetic.task`): a small family that shares one skill, carrying
(or borrowing) from column to column with answers written least-significant digit first,
but differs in what is done, so a source task and a target task can share the skill that
RL sharpens without sharing the prompt (PaST):

  addition     "47+85="        -> "231"   a + b (the task above)
  addition3    "47+85+12="     -> "341"   a + b + c: a column can carry 2
  subtraction  "85-47="        -> "83"    a - b, a >= b, zero-padded to `difficulty` digits
                                          (85-80= -> "50"); `carries` filters by borrows
  sum_words    "sum of 47 and 85 =" -> "231"  a + b asked in words, no operator symbol

And one task made for tools (multi-turn rollouts, rollout/tool_env.py):

  multiplication  "123*45=" -> "5535"  a (difficulty digits) * b (difficulty - 1 digits), the
               product in the usual order; the solution is "#### 5535", or with
               `tool_calls` the calculator's transcript
               "<calculator>123*45</calculator><result>5535</result>#### 5535", which a
               warm start uses to show the call format. A tiny model does not learn to
               multiply in minutes; with the tool it has to learn to call and copy.

Answers of the new tasks are at most 8 characters (difficulty <= 7). Combinations that
mean nothing are refused with the field named: `operator` on sum_words (no symbol), and
`carries: top_only` on subtraction (with a >= b the highest column never borrows).
`operator` replaces the symbol of addition and addition3; for subtraction the default '+'
stands for the task's own '-' and any other symbol is used as given.
"""
from __future__ import annotations

import random

from ..types import Problem


def addition_answer(a: int, b: int) -> str:
    """The sum written least-significant digit first."""
    return str(a + b)[::-1]


def carry_columns(*operands: int) -> list[bool]:
    """For each column of the sum of `operands` (two or more), least significant first:
    does it carry out (a carry of 1 or, with three operands, 2)?"""
    out, carry, xs = [], 0, list(operands)
    while any(xs):
        s = sum(x % 10 for x in xs) + carry
        carry = s // 10
        out.append(carry > 0)
        xs = [x // 10 for x in xs]
    return out


def borrow_columns(a: int, b: int, digits: int) -> list[bool]:
    """For each of the `digits` columns of a - b (a >= b), least significant first: does it
    borrow from the next column?"""
    out, borrow = [], 0
    for _ in range(digits):
        d = a % 10 - b % 10 - borrow
        borrow = int(d < 0)
        out.append(bool(borrow))
        a, b = a // 10, b // 10
    return out


def subtraction_answer(a: int, b: int, digits: int) -> str:
    """a - b zero-padded to `digits` digits, least-significant first: one digit a column."""
    return str(a - b).zfill(digits)[::-1]


TASKS = ("addition", "addition3", "subtraction", "sum_words", "multiplication")
MAX_ANSWER_CHARS = 8  # answers of the arithmetic-skill tasks (addition keeps its old range)


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


def _draw(rng: random.Random, lo: int, hi: int, n: int) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(n)]


TOOL_CALL_END = "</calculator>"


def tool_solution(expression: str, value: int) -> str:
    """The calculator transcript of an answer, in the tools environment's tag format."""
    return f"<calculator>{expression}{TOOL_CALL_END}<result>{value}</result>#### {value}"


def make_multiplication(rng: random.Random, digits: int, index: int, prefix: str, operator: str = "+",
                        tool_calls: bool = False) -> Problem:
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    small = max(1, digits - 1)
    a = rng.randint(lo, 10**digits - 1)
    b = rng.randint(0 if small == 1 else 10 ** (small - 1), 10**small - 1)
    symbol = "*" if operator == "+" else operator
    expression = f"{a}*{b}"
    return Problem(id=f"{prefix}-{index}", prompt=f"{a}{symbol}{b}=", answer=str(a * b),
                   solution=tool_solution(expression, a * b) if tool_calls else f"#### {a * b}",
                   metadata={"level": digits, "a": a, "b": b})


def make_skill_problem(task: str, rng: random.Random, digits: int, index: int, prefix: str,
                       carries: str = "any", operator: str = "+") -> Problem:
    """One problem of the arithmetic-skill tasks other than plain addition."""
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    keep = CARRY_FILTERS[carries]
    for _ in range(100_000):  # a filter no problem of this level passes must not hang
        if task == "addition3":
            a, b, c = _draw(rng, lo, hi, 3)
            if keep(carry_columns(a, b, c)):
                return Problem(id=f"{prefix}-{index}", prompt=f"{a}{operator}{b}{operator}{c}=",
                               answer=str(a + b + c)[::-1], solution=str(a + b + c)[::-1],
                               metadata={"level": digits, "a": a, "b": b, "c": c})
        elif task == "subtraction":
            a, b = sorted(_draw(rng, lo, hi, 2), reverse=True)
            if keep(borrow_columns(a, b, digits)):
                symbol = "-" if operator == "+" else operator
                answer = subtraction_answer(a, b, digits)
                return Problem(id=f"{prefix}-{index}", prompt=f"{a}{symbol}{b}=", answer=answer,
                               solution=answer, metadata={"level": digits, "a": a, "b": b})
        elif task == "sum_words":
            a, b = _draw(rng, lo, hi, 2)
            if keep(carry_columns(a, b)):
                answer = addition_answer(a, b)
                return Problem(id=f"{prefix}-{index}", prompt=f"sum of {a} and {b} =",
                               answer=answer, solution=answer,
                               metadata={"level": digits, "a": a, "b": b})
        else:
            raise ValueError(f"data.synthetic.task: unknown task {task!r}")
    raise ValueError(f"data.synthetic.carries: no {digits}-digit {task} problem passes "
                     f"the filter {carries!r}")


def check_task(task: str, difficulty: int, carries: str = "any", operator: str = "+",
               min_difficulty: int | None = None) -> None:
    """Refuse a task name or a combination of fields that means nothing, naming the field."""
    if task not in TASKS:
        raise ValueError(f"data.synthetic.task: unknown task {task!r}; expected one of {list(TASKS)}")
    if carries not in CARRY_FILTERS:
        raise ValueError(f"data.synthetic.carries: unknown filter {carries!r}; "
                         f"expected one of {list(CARRY_FILTERS)}")
    lowest = min(min_difficulty or difficulty, difficulty)
    # one column: no "only out of the lowest / highest" (and a one-digit a - b never borrows)
    one_column_impossible = {"units_only", "top_only"} | (
        {"some"} if task == "subtraction" else set())
    if lowest == 1 and carries in one_column_impossible:
        raise ValueError(f"data.synthetic.carries: {carries!r} needs at least 2 digits for task "
                         f"{task!r}; raise difficulty (and min_difficulty) to >= 2")
    if task == "addition":
        return
    if task == "multiplication":
        if carries != "any":
            raise ValueError(f"data.synthetic.carries: task 'multiplication' has no carry filter; got {carries!r}")
        if 2 * difficulty - 1 > MAX_ANSWER_CHARS:
            raise ValueError(f"data.synthetic.difficulty: task 'multiplication' keeps products <= "
                             f"{MAX_ANSWER_CHARS} digits; difficulty {difficulty} gives {2 * difficulty - 1}")
        return
    longest = difficulty + (task != "subtraction")  # a sum may gain a digit
    if longest > MAX_ANSWER_CHARS:
        raise ValueError(f"data.synthetic.difficulty: task {task!r} keeps answers <= "
                         f"{MAX_ANSWER_CHARS} characters; difficulty {difficulty} gives {longest}")
    if task == "sum_words" and operator != "+":
        raise ValueError(f"data.synthetic.operator: task 'sum_words' asks in words "
                         f"('sum of A and B =') and has no operator symbol; got {operator!r}, "
                         "leave it at '+'")
    if task == "subtraction" and carries == "top_only":
        raise ValueError("data.synthetic.carries: 'top_only' is impossible for task "
                         "'subtraction' (with a >= b the highest column never borrows)")


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
    tool_calls: bool = False,
) -> list[Problem]:
    """`num` distinct problems; `exclude` holds prompts that must not appear (held-out).
    With `allow_fewer`, a level with fewer distinct problems than `num` gives them all."""
    check_task(task, difficulty, carries, operator, min_difficulty)
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
        if task == "addition":  # its draws are unchanged, so earlier runs' data is the same
            p = make_addition(rng, rng.choice(levels), len(out), f"{task}-{split}", carries, operator)
        elif task == "multiplication":
            p = make_multiplication(rng, rng.choice(levels), len(out), f"{task}-{split}", operator, tool_calls)
        else:
            p = make_skill_problem(task, rng, rng.choice(levels), len(out), f"{task}-{split}",
                                   carries, operator)
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
        operator=cfg.operator, tool_calls=cfg.tool_calls,
    )
    train = synthetic_problems(
        cfg.task, cfg.num_train, cfg.difficulty, cfg.seed,
        min_difficulty=cfg.min_difficulty, split="train", exclude={p.prompt for p in held},
        carries=cfg.carries, operator=cfg.operator, tool_calls=cfg.tool_calls,
    )
    return train, held
