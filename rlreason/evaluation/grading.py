"""Grade benchmark completions: correctness per sample, answer clusters for majority voting.

The correctness check is a reward function from `rlreason.rewards` (``math`` by default:
the last ``\\boxed{}``, GSM8K ``####`` or "the answer is", compared with math-verify), so a
benchmark number and a training reward can never disagree about what "correct" means.
It runs inside `RewardFunction`, which bounds each call with `timeout_s`.

Unlike training, where a broken reward must stop the run, an evaluation of hundreds of
problems must not die on one pathological sample: a grader that raises or times out
marks that sample wrong and records the reason, and the run goes on. The caller counts
those in ``grader_errors``, so a grader problem is visible, not silent.

A sample votes for its extracted answer (the grader's fallback reading when there is none,
so votes and grades agree). Majority voting needs to know which answers are "the same": ``1/2``, ``0.5`` and
``\\frac{1}{2}`` are one vote. Answers are clustered per problem, cheapest test first:
identical after `normalize_answer`, then equal plain numbers, then
`rlreason.rewards.answers_equivalent` (math-verify) against each cluster's first answer.
The exact_match grader clusters by whitespace-normalised string instead, as it grades.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rlreason.rewards import RewardError, RewardFunction, answers_equivalent, extract_answer, normalize_answer
from rlreason.rewards.math import parse_free_text
from rlreason.types import Problem

__all__ = ["GradedProblem", "Grader"]

_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_WS_RE = re.compile(r"\s+")


@dataclass
class GradedProblem:
    """The grades of one problem's n completions, index-aligned.

    answers: the extracted final answer of each completion (None: none found).
    correct: whether each completion is correct.
    votes: each completion's answer-cluster id for majority voting (None: abstains).
    errors: None, or why grading that completion failed (it then counts as wrong).
    vote_errors: answer comparisons that failed while clustering (treated as "different").
    """

    answers: list[str | None]
    correct: list[bool]
    votes: list[int | None]
    errors: list[str | None]
    vote_errors: int = 0


def _ws(text: str) -> str:
    return _WS_RE.sub(" ", text).strip()


def _text_answer(completion: str, timeout_s: float) -> str | None:
    """The answer math-verify reads from free text (the `math` reward's fallback), as a string."""
    parsed = parse_free_text(completion, timeout_s)
    text = parsed[-1] if parsed and isinstance(parsed[-1], str) else None
    return (text.strip() or None) if text else None


class Grader:
    """Correctness and answer clustering for one benchmark.

    ``Grader("math")`` (or ``"exact_match"``, any registered reward name,
    ``"module:function"``, or a callable ``fn(completion, problem) -> float``). A score
    >= 1.0 is correct, as in the trainer's held-out accuracy. `timeout_s` bounds each
    grading call and each answer comparison.
    """

    def __init__(self, reward: str | Callable[..., float] = "math", *, timeout_s: float = 5.0,
                 name: str | None = None) -> None:
        self.reward = RewardFunction(reward, name=name, timeout_s=timeout_s)
        if self.reward.scope == "group" or self.reward.takes_length:
            raise ValueError(f"reward {self.reward.name!r} does not compare an answer with a label (it scores a group "
                             "or a length), so it cannot grade: grade with eval.reward, e.g. exact_match or math")
        self.name = self.reward.name
        self.timeout_s = timeout_s
        self.exact = self.name == "exact_match"

    def __repr__(self) -> str:
        return f"Grader({self.name!r}, timeout_s={self.timeout_s})"

    # ------------------------------------------------------------ one sample
    def answer(self, completion: str) -> str | None:
        """The final answer the completion states (what it votes for), or None.

        `extract_answer` first. When it finds nothing, the vote falls back to what the
        grader itself falls back to: the whole completion for exact_match, math-verify's
        last expression in the text for math (so ``... = 42`` votes 42, as it is graded).
        """
        try:
            found = extract_answer(completion)
            if found is None:
                found = (_ws(completion) or None) if self.exact else _text_answer(completion, self.timeout_s)
        except Exception:  # noqa: BLE001 - an extractor bug must not abort an evaluation
            found = None
        return found

    def grade(self, completion: str, problem: Problem) -> tuple[bool, str | None]:
        """(correct, error): error is None, or why grading failed (then correct is False)."""
        timeouts = self.reward.timeouts
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # timeouts are reported by us
                score = self.reward(completion, problem)
        except RewardError as exc:
            return False, str(exc)[:500]
        except Exception as exc:  # noqa: BLE001 - anything else a grader can throw
            return False, f"grader {self.name!r} raised {exc!r}"[:500]
        if self.reward.timeouts > timeouts:
            return False, f"grader {self.name!r} timed out after {self.timeout_s}s"
        return score >= 1.0, None

    # ------------------------------------------------------------ clustering
    def _key(self, answer: str) -> str:
        return _ws(answer) if self.exact else normalize_answer(answer)

    def _same(self, a: str, b: str) -> bool:
        if self.exact:
            return _ws(a) == _ws(b)
        if _NUMBER_RE.fullmatch(a) and _NUMBER_RE.fullmatch(b):
            return float(a) == float(b)
        return answers_equivalent(a, b, timeout_s=self.timeout_s)

    def cluster(self, answers: Sequence[str | None]) -> tuple[list[int | None], int]:
        """(vote ids, failed comparisons): equal ids for equivalent answers, None for no answer.

        Ids count from 0 in order of first appearance, so they are deterministic.
        """
        reps: list[str] = []
        by_key: dict[str, int] = {}
        votes: list[int | None] = []
        failures = 0
        for a in answers:
            if a is None:
                votes.append(None)
                continue
            key = self._key(a)
            if key not in by_key:
                match = None
                for i, rep in enumerate(reps):
                    try:
                        same = self._same(a, rep)
                    except Exception:  # noqa: BLE001 - a failed comparison means "different"
                        failures += 1
                        same = False
                    if same:
                        match = i
                        break
                if match is None:
                    match = len(reps)
                    reps.append(a)
                by_key[key] = match
            votes.append(by_key[key])
        return votes, failures

    # ------------------------------------------------------------ one problem
    def grade_problem(self, problem: Problem, completions: Sequence[str]) -> GradedProblem:
        """Grade every completion of `problem` and cluster their answers."""
        answers = [self.answer(c) for c in completions]
        grades = [self.grade(c, problem) for c in completions]
        votes, failures = self.cluster(answers)
        return GradedProblem(answers=answers, correct=[g[0] for g in grades], votes=votes,
                             errors=[g[1] for g in grades], vote_errors=failures)
