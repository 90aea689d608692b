"""Tests for rlreason.rewards: extraction, math equivalence on real benchmarks, registry."""
from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest

from rlreason.rewards import (
    RewardError,
    RewardFunction,
    answers_equivalent,
    compute_rewards,
    exact_match_reward,
    extract_answer,
    format_reward,
    gsm8k_gold,
    math_equal,
    math_reward,
    registered_rewards,
    resolve_reward,
)
from rlreason.types import Problem


def _problem(answer: str, pid: str = "p0") -> Problem:
    return Problem(id=pid, answer=answer, prompt="q")


def _load_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        pytest.skip(f"benchmark file missing: {path}")
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _acceptance(completions: list[str], answers: list[str]) -> tuple[float, list[int]]:
    accepted = [
        i
        for i, (c, a) in enumerate(zip(completions, answers))
        if math_reward(c, _problem(a, pid=str(i))) == 1.0
    ]
    return len(accepted) / len(completions), accepted


def _derangement(n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """(order, partner): a seeded shuffle, and for each position the next item in it."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partner = order[1:] + order[:1]  # roll by one: nobody keeps their own answer
    return order, partner


# --- extraction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"first \boxed{3}, then on reflection \boxed{4}", "4"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\fbox{7}", "7"),
        (r"the set is \boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{5} and then a truncated \boxed{\frac{1}{", "5"),
        ("She pays 1,000 + 234.\n#### 1,234", "1234"),
        ("#### 5\nwait\n#### 6", "6"),
        ("#### $18", "18"),
        ("The answer is 42.", "42"),
        ("the answer is 3. Then the answer is 7.", "7"),
        ("THE ANSWER IS $\\frac{1}{2}$.", r"\frac{1}{2}"),
        ("The answer is 3.5", "3.5"),
        ("I computed 12 apples.", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_gsm8k_gold() -> None:
    assert gsm8k_gold("She makes 9 * 2 = 18.\n#### 1,018") == "1018"
    assert gsm8k_gold("#### 1\n#### 2 ") == "2"


# --- math equivalence -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gold", "equal"),
    [
        ("0.5", r"\frac{1}{2}", True),
        (r"(3,\frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)", True),
        ("1000", "1,000", True),
        ("x^2+1", "1+x^2", True),
        ("sqrt(2)", r"\sqrt{2}", True),
        (r"\text{Evelyn}", r"\text{Evelyn}", True),
        ("3", r"\left( 3, \frac{\pi}{2} \right)", False),
        ("2", "3", False),
        (r"\frac{1}{3}", "0.34", False),
    ],
)
def test_math_equal(pred: str, gold: str, equal: bool) -> None:
    assert math_equal(pred, gold) is equal


def test_math_equal_off_main_thread() -> None:
    """math-verify's signal.alarm timeouts must be switched off in worker threads."""
    results: list[object] = []

    def work() -> None:
        try:
            results.append(math_equal("0.5", r"\frac{1}{2}"))
        except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
            results.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(30)
    assert results == [True]


def test_math_reward_forms() -> None:
    assert math_reward(r"so $x=\boxed{0.5}$", _problem(r"\frac{1}{2}")) == 1.0
    assert math_reward("Total: 5 + 13 = 18\n#### 18", _problem("He has 18.\n#### 18")) == 1.0
    assert math_reward("The answer is 17.", _problem("18")) == 0.0
    # No answer convention: math-verify reads the trailing expression of the whole text.
    assert math_reward(r"so the value is $\frac{1}{2}$", _problem("0.5")) == 1.0
    assert math_reward("no idea", _problem("0.5")) == 0.0


def test_answers_equivalent() -> None:
    assert answers_equivalent(r"\dfrac{1}{2}", r"\frac{1}{2}")
    assert answers_equivalent("0.5", r"\frac12")
    assert not answers_equivalent("0.5", "0.6")


def test_gsm8k_gold_and_shuffled(benchmarks_dir: Path) -> None:
    rows = _load_jsonl(benchmarks_dir / "gsm8k_test.jsonl")
    assert len(rows) == 1319
    solutions = [r["answer"] for r in rows]

    gold_rate, _ = _acceptance(solutions, solutions)
    order, partner = _derangement(len(rows))
    shuffled_rate, accepted = _acceptance(
        [solutions[i] for i in order], [solutions[j] for j in partner]
    )
    print(f"gsm8k_test: gold acceptance {gold_rate:.4f}, shuffled acceptance {shuffled_rate:.4f}")
    assert gold_rate >= 0.99
    assert shuffled_rate <= 0.01
    # Every shuffled acceptance must be a genuine collision of final answers.
    for k in accepted:
        assert gsm8k_gold(solutions[order[k]]) == gsm8k_gold(solutions[partner[k]])


def test_math500_gold_and_shuffled(benchmarks_dir: Path) -> None:
    rows = _load_jsonl(benchmarks_dir / "math500.jsonl")
    assert len(rows) == 500
    solutions = [r["solution"] for r in rows]
    answers = [r["answer"] for r in rows]

    gold_rate, _ = _acceptance(solutions, answers)
    order, partner = _derangement(len(rows))
    shuffled_rate, accepted = _acceptance(
        [solutions[i] for i in order], [answers[j] for j in partner]
    )
    print(f"math500: gold acceptance {gold_rate:.4f}, shuffled acceptance {shuffled_rate:.4f}")
    assert gold_rate >= 0.99
    assert shuffled_rate <= 0.01
    for k in accepted:
        assert answers_equivalent(answers[order[k]], answers[partner[k]])


# --- basic rewards ----------------------------------------------------------------------


def test_exact_match_and_format() -> None:
    assert exact_match_reward("  Paris \n", _problem("Paris")) == 1.0
    assert exact_match_reward(r"It is \boxed{New  York}", _problem("New York")) == 1.0
    assert exact_match_reward(r"It is \boxed{Paris}", _problem("paris")) == 0.0
    assert exact_match_reward(" Paris", _problem("Paris"), strip=False) == 0.0
    assert format_reward(r"thus \boxed{3}", _problem("3")) == 1.0
    assert format_reward("thus 3", _problem("3")) == 0.0
    assert format_reward("<answer>3</answer>", _problem("3"), pattern=r"<answer>.*</answer>") == 1.0


# --- registry ---------------------------------------------------------------------------


def test_builtins_registered() -> None:
    assert {"math", "exact_match", "format"} <= set(registered_rewards())
    assert resolve_reward("math") is math_reward


def test_unknown_name_lists_registered() -> None:
    with pytest.raises(RewardError) as info:
        resolve_reward("no_such_reward")
    message = str(info.value)
    assert "no_such_reward" in message
    for name in ("math", "exact_match", "format"):
        assert name in message


def test_module_function_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_rewards_mod.py").write_text(
        "def length_bonus(completion, problem, scale=1.0):\n"
        "    return scale * len(completion)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = resolve_reward("my_rewards_mod:length_bonus")
    assert fn("abc", _problem("1")) == 3.0

    rf = RewardFunction("my_rewards_mod:length_bonus", kwargs={"scale": 0.5})
    assert rf.name == "my_rewards_mod:length_bonus"
    assert rf("abcd", _problem("1")) == 2.0

    with pytest.raises(RewardError, match="my_rewards_mod:missing"):
        resolve_reward("my_rewards_mod:missing")
    with pytest.raises(RewardError, match="no_such_module_xyz"):
        resolve_reward("no_such_module_xyz:fn")


def test_raising_reward_names_reward_and_problem() -> None:
    def broken(completion: str, problem: Problem) -> float:
        raise ZeroDivisionError("boom")

    rf = RewardFunction(broken, name="broken_reward")
    with pytest.raises(RewardError) as info:
        rf("x" * 500, _problem("1", pid="problem-17"))
    message = str(info.value)
    assert "broken_reward" in message
    assert "problem-17" in message
    assert "x" * 200 in message and "x" * 201 not in message
    assert isinstance(info.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize("bad", ["1.0", None, [1.0], float("nan"), float("inf")])
def test_non_numeric_return(bad: object) -> None:
    rf = RewardFunction(lambda c, p: bad, name="bad_return")
    with pytest.raises(RewardError, match="bad_return") as info:
        rf("completion", _problem("1", pid="problem-3"))
    assert "problem-3" in str(info.value)


def test_numeric_like_returns_accepted() -> None:
    assert RewardFunction(lambda c, p: True)("c", _problem("1")) == 1.0
    assert RewardFunction(lambda c, p: 2)("c", _problem("1")) == 2.0


def test_timeout_main_thread() -> None:
    def slow(completion: str, problem: Problem) -> float:
        time.sleep(5)
        return 1.0

    rf = RewardFunction(slow, name="slow_reward", timeout_s=0.3)
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="slow_reward"):
        assert rf("c", _problem("1")) == 0.0
    assert time.monotonic() - start < 2.0
    assert rf.timeouts == 1
    # The alarm is disarmed afterwards: a fast call still works.
    rf.fn = lambda c, p: 0.25
    assert rf("c", _problem("1")) == 0.25
    assert rf.timeouts == 1


def test_timeout_worker_thread() -> None:
    rf = RewardFunction(lambda c, p: time.sleep(5) or 1.0, name="slow_in_thread", timeout_s=0.3)
    results: list[float] = []

    def work() -> None:
        with pytest.warns(RuntimeWarning, match="slow_in_thread"):
            results.append(rf("c", _problem("1")))

    start = time.monotonic()
    worker = threading.Thread(target=work)
    worker.start()
    worker.join(10)
    assert results == [0.0]
    assert time.monotonic() - start < 2.0
    assert rf.timeouts == 1


def test_math_reward_under_reward_function_keeps_its_deadline() -> None:
    """math-verify's alarm() must not cancel the wrapper's timer (they share ITIMER_REAL)."""
    rf = RewardFunction("math", timeout_s=5.0)
    assert rf(r"\boxed{0.5}", _problem(r"\frac{1}{2}")) == 1.0
    assert rf(r"\boxed{0.6}", _problem(r"\frac{1}{2}")) == 0.0
    assert rf.timeouts == 0


def test_compute_rewards_weights() -> None:
    problems = [_problem("4", pid="a"), _problem("5", pid="b"), _problem("6", pid="c")]
    completions = [r"\boxed{4}", "#### 7", r"\boxed{6.0}"]
    rewards = [
        (RewardFunction("math"), 1.0),
        (RewardFunction("format"), 0.5),
        (RewardFunction(lambda c, p: len(c), name="length"), -0.1),
    ]
    totals, raw = compute_rewards(completions, problems, rewards)
    assert raw == {
        "math": [1.0, 0.0, 1.0],
        "format": [1.0, 0.0, 1.0],
        "length": [9.0, 6.0, 11.0],
    }
    expected = [1.0 + 0.5 - 0.9, 0.0 + 0.0 - 0.6, 1.0 + 0.5 - 1.1]
    assert totals == pytest.approx(expected)

    with pytest.raises(RewardError, match="unique"):
        compute_rewards(completions, problems, [(RewardFunction("math"), 1.0)] * 2)
    with pytest.raises(RewardError):
        compute_rewards(completions, problems[:2], rewards)


def test_pathological_math_is_interrupted_by_wrapper() -> None:
    """SymPy can grind on towers of exponents; the wrapper's timer must still fire even
    though math-verify catches ``Exception`` internally."""
    tower = "9^{9^{9^{9^{9}}}}"
    rf = RewardFunction("math", timeout_s=1.0)
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="'math' timed out"):
        assert rf(rf"\boxed{{{tower} - {tower} + 2}}", _problem("2", pid="tower")) == 0.0
    assert time.monotonic() - start < 3.0
    assert rf.timeouts == 1


def test_competition_formatting_around_an_integer_is_read():
    """AIME solutions box `\\textbf{(073)}`: the number 73, not nothing."""
    from rlreason.rewards.math import math_equal

    assert math_equal(r"\textbf{(073)}", "73") and not math_equal(r"\textbf{(073)}", "74")
    assert math_equal("(1,2)", "(1,2)") and not math_equal("(1,2)", "12")
    assert math_equal("27", "27.0")  # AMC answers are floats in the file
