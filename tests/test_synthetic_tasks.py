"""The arithmetic-skill task types of rlreason.data.synthetic (addition3, subtraction,
sum_words): answers checked by hand, determinism, disjoint splits, refused combinations."""

from __future__ import annotations

import pytest

from rlreason.config import SyntheticConfig
from rlreason.data.synthetic import (
    TASKS,
    borrow_columns,
    carry_columns,
    subtraction_answer,
    synthetic_problems,
    synthetic_splits,
)

NEW = ["addition3", "subtraction", "sum_words"]


def test_answers_by_hand():
    assert carry_columns(47, 85, 12) == [True, True]  # 7+5+2=14, 4+8+1+1=14: 144
    assert carry_columns(99, 99, 99) == [True, True]  # 27, 9*3+2=29: carries of 2; 297
    assert carry_columns(12, 30, 41) == [False, False]  # 83
    assert borrow_columns(85, 47, 2) == [True, False]  # 5-7 borrows, 8-4-1 does not
    assert borrow_columns(492, 454, 3) == [True, False, False]
    assert subtraction_answer(85, 47, 2) == "83"  # 38, least-significant first
    assert subtraction_answer(85, 80, 2) == "50"  # 05: one digit per column
    assert subtraction_answer(7, 7, 1) == "0"


@pytest.mark.parametrize("task", NEW)
def test_every_answer_is_right(task):
    for level in (1, 2, 3, 7):
        for p in synthetic_problems(task, 64, level, seed=3, allow_fewer=True):
            a, b = p.metadata["a"], p.metadata["b"]
            assert len(p.answer) <= 8 and p.answer == p.solution and p.answer.isdigit()
            if task == "addition3":
                assert p.prompt == f"{a}+{b}+{p.metadata['c']}="
                assert int(p.answer[::-1]) == a + b + p.metadata["c"]
            elif task == "subtraction":
                assert p.prompt == f"{a}-{b}=" and a >= b and len(p.answer) == level
                assert int(p.answer[::-1]) == a - b
            else:
                assert p.prompt == f"sum of {a} and {b} =" and int(p.answer[::-1]) == a + b
            assert all(len(str(x)) == level for x in (a, b))


def test_examples_and_filters():
    p = synthetic_problems("addition3", 1, 2, seed=0)[0]
    assert (p.prompt, p.answer) == ("71+38+99=", "802")  # 208 reversed
    assert synthetic_problems("addition3", 1, 2, seed=0, operator="&")[0].prompt.count("&") == 2
    for p in synthetic_problems("subtraction", 50, 3, seed=0, carries="units_only"):
        assert borrow_columns(p.metadata["a"], p.metadata["b"], 3) == [True, False, False]
    for p in synthetic_problems("subtraction", 50, 2, seed=0, carries="none"):
        assert all(int(x) >= int(y) for x, y in zip(str(p.metadata["a"]), str(p.metadata["b"])))
    assert synthetic_problems("subtraction", 1, 2, seed=0, operator="~")[0].prompt[2] == "~"
    for p in synthetic_problems("addition3", 50, 2, seed=0, carries="some"):
        assert any(carry_columns(p.metadata["a"], p.metadata["b"], p.metadata["c"]))
    for p in synthetic_problems("sum_words", 50, 2, seed=0, carries="top_only"):
        assert carry_columns(p.metadata["a"], p.metadata["b"]) == [False, True]


@pytest.mark.parametrize("task", NEW)
def test_deterministic_by_seed(task):
    a = [(p.prompt, p.answer) for p in synthetic_problems(task, 100, 2, seed=7)]
    assert a == [(p.prompt, p.answer) for p in synthetic_problems(task, 100, 2, seed=7)]
    assert a != [(p.prompt, p.answer) for p in synthetic_problems(task, 100, 2, seed=8)]
    assert len({q for q, _ in a}) == 100


@pytest.mark.parametrize("task", TASKS)
def test_splits_disjoint(task):
    cfg = SyntheticConfig(task=task, difficulty=2, num_train=500, num_eval=100, seed=1)
    train, held = synthetic_splits(cfg)
    assert len(train) == 500 and len(held) == 100
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    assert all(p.id.startswith(f"{task}-train-") for p in train)


@pytest.mark.parametrize("kwargs,field", [
    (dict(task="sum_words", operator="&"), "data.synthetic.operator"),
    (dict(task="subtraction", carries="top_only"), "data.synthetic.carries"),
    (dict(task="subtraction", difficulty=1, carries="some"), "data.synthetic.carries"),
    (dict(task="addition3", difficulty=2, min_difficulty=1, carries="units_only"),
     "data.synthetic.carries"),
    (dict(task="addition", difficulty=1, carries="top_only"), "data.synthetic.carries"),
    (dict(task="addition3", difficulty=8), "data.synthetic.difficulty"),
    (dict(task="division"), "data.synthetic.task"),
    (dict(task="multiplication", carries="some"), "data.synthetic.carries"),
    (dict(task="multiplication", difficulty=5), "data.synthetic.difficulty"),
])
def test_meaningless_combinations_refused(kwargs, field):
    kw = {"difficulty": 2, **kwargs}
    task, difficulty = kw.pop("task"), kw.pop("difficulty")
    with pytest.raises(ValueError, match=field):
        synthetic_problems(task, 4, difficulty, seed=0, **kw)


def test_config_accepts_the_tasks():
    for task in TASKS:
        assert SyntheticConfig(task=task).task == task
    with pytest.raises(ValueError):
        SyntheticConfig(task="division")
    assert synthetic_problems("subtraction", 8, 8, seed=0)[0].answer.isdigit()  # 8 chars: ok


def test_multiplication_shows_the_calculator_call_or_the_bare_answer():
    for p in synthetic_problems("multiplication", 20, 3, seed=0, tool_calls=True):
        a, b = p.metadata["a"], p.metadata["b"]
        assert 100 <= a <= 999 and 10 <= b <= 99 and p.prompt == f"{a}*{b}=" and p.answer == str(a * b)
        assert p.solution == f"<calculator>{a}*{b}</calculator><result>{a * b}</result>#### {a * b}"
    bare = synthetic_problems("multiplication", 20, 3, seed=0)
    assert all(p.solution == f"#### {p.answer}" for p in bare)
