"""Mathematical answer equivalence, via math-verify (Hugging Face).

String comparison under-rewards correct answers (``0.5`` vs ``\\frac{1}{2}``,
``(3,\\frac{\\pi}{2})`` vs ``\\left( 3, \\frac{\\pi}{2} \\right)``), which biases RL towards
whatever surface form the gold happens to use. math-verify parses both sides into SymPy
and compares them symbolically and numerically.

Threads: math-verify bounds its own parse/compare with ``signal.alarm``, which only works
in the main thread (elsewhere it raises). We therefore pass its timeouts only in the main
thread, and only when no outer ``ITIMER_REAL`` deadline is armed: ``alarm()`` shares that
timer, so an inner alarm would silently cancel the outer one set by
`rlreason.rewards.registry.RewardFunction`, which then bounds the whole call instead.
In other threads the caller must bound run time (RewardFunction does, with a join timeout).
"""
from __future__ import annotations

import logging
import math
import re
import signal
import threading
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from rlreason.rewards.extract import extract_answer, gsm8k_gold
from rlreason.rewards.registry import register_reward
from rlreason.types import Problem

__all__ = ["answers_equivalent", "gold_answer", "math_equal", "math_reward", "normalize_answer"]


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns the first time its timeouts are disabled; we disable them on
    purpose (see the module docstring), so that one message is noise. Everything else passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


# An isolated answer string: take the boxed content (we put it there) first, then any
# LaTeX, then a plain expression such as ``1/2`` or ``sqrt(2)``.
_ANSWER_CONFIG = (
    LatexExtractionConfig(boxed_match_priority=0),
    ExprExtractionConfig(),
)
# A whole free-text completion: math-verify's defaults (boxed first, else the last
# LaTeX/expression it can find).
_TEXT_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())

_NORMALIZE_DROP_RE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\ |\$|\s+")


def _signal_timeout(timeout_s: float | None) -> int | None:
    """The timeout to hand math-verify: whole seconds, or None where signals can't be used."""
    if timeout_s is None or timeout_s <= 0:
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    if hasattr(signal, "getitimer") and signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        return None  # an outer deadline is armed; alarm() would clobber it
    return max(1, math.ceil(timeout_s))  # signal.alarm takes whole seconds


def normalize_answer(text: str) -> str:
    """Cheap canonical form for exact comparison: no whitespace, ``$``, ``\\left``/``\\right``,
    LaTeX spacing, ``\\dfrac``/``\\tfrac``, or trailing period."""
    text = _NORMALIZE_DROP_RE.sub("", text)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return text.rstrip(".")


_BOLD_RE = re.compile(r"^\\(?:textbf|mathbf|text)\{(.*)\}$", re.S)
_PAREN_INT_RE = re.compile(r"^\((\d+)\)$")


def _unwrap(answer: str) -> str:
    """Competition formatting around a bare integer: AIME solutions box ``\\textbf{(073)}``,
    which math-verify reads as no number at all (1 of 30 AIME 2024 gold solutions failed)."""
    inner = answer.strip()
    bold = _BOLD_RE.match(inner)
    if bold:
        inner = bold.group(1).strip()
    paren = _PAREN_INT_RE.match(inner)
    return paren.group(1) if paren else inner if bold else answer


def _parse_answer(answer: str, timeout: int | None) -> list[Any]:
    """Parse an isolated answer string, plain number or LaTeX, into math-verify objects."""
    answer = _unwrap(answer.strip())
    candidates = [answer] if "\\boxed" in answer else [f"\\boxed{{{answer}}}", f"${answer}$"]
    for candidate in candidates:
        parsed = parse(candidate, extraction_config=_ANSWER_CONFIG, parsing_timeout=timeout)
        if parsed:
            return parsed
    return []


def math_equal(pred: str, gold: str, timeout_s: float = 5.0) -> bool:
    """Whether answer `pred` is mathematically equivalent to answer `gold`.

    Both are isolated answers (e.g. the output of `extract_answer`), not whole solutions.
    Identical normalised strings are equal without parsing (this also covers text
    answers such as ``\\text{Evelyn}``). `timeout_s` bounds each math-verify step in the
    main thread; see the module docstring for other threads.
    """
    if normalize_answer(pred) == normalize_answer(gold):
        return bool(normalize_answer(pred))
    timeout = _signal_timeout(timeout_s)
    gold_parsed = _parse_answer(gold, timeout)
    pred_parsed = _parse_answer(pred, timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def gold_answer(answer: str) -> str:
    """The final answer in a `Problem.answer`: a GSM8K worked solution is cut to its
    ``#### N``; anything else (``42``, ``\\frac{1}{2}``) is already an answer."""
    return gsm8k_gold(answer) if "####" in answer else answer.strip()


def parse_free_text(completion: str, timeout_s: float = 5.0) -> list:
    """math-verify's reading of free text (its last boxed or trailing expression): the
    fallback when a completion follows no answer convention. Graders and majority voting
    both use it, so a sample votes for exactly what it was graded on."""
    return parse(completion, extraction_config=_TEXT_CONFIG, parsing_timeout=_signal_timeout(timeout_s))


@register_reward("math")
def math_reward(completion: str, problem: Problem, *, timeout_s: float = 5.0) -> float:
    """1.0 if the completion's final answer equals ``problem.answer`` mathematically, else 0.0.

    The answer is taken by `extract_answer` (last box, ``####``, "the answer is"). When
    the completion uses none of those conventions, math-verify gets one more look at the
    whole text (its last boxed or trailing expression), so a bare ``... = 42`` still counts.
    """
    gold = gold_answer(problem.answer)
    pred = extract_answer(completion)
    if pred is not None:
        return 1.0 if math_equal(pred, gold, timeout_s=timeout_s) else 0.0
    timeout = _signal_timeout(timeout_s)
    pred_parsed = parse_free_text(completion, timeout_s)
    gold_parsed = _parse_answer(gold, timeout)
    if not pred_parsed or not gold_parsed:
        return 0.0
    return 1.0 if verify(gold_parsed, pred_parsed, timeout_seconds=timeout) else 0.0


def answers_equivalent(a: str, b: str, timeout_s: float = 5.0) -> bool:
    """Whether two extracted answers are the same, for grouping votes (majority voting).

    Exact match after `normalize_answer` first (fast, and right for text answers), then
    math-verify with `b` as the reference.
    """
    if normalize_answer(a) == normalize_answer(b):
        return True
    return math_equal(a, b, timeout_s=timeout_s)
