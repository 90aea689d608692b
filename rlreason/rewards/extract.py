"""Pull the final answer out of free model text.

Rewards and majority voting compare *final answers*, not whole completions, so every
verifier starts here. The conventions we recognise, in order of trust:

1. ``\\boxed{...}`` / ``\\fbox{...}`` (MATH, most instruct models): the LAST complete one,
   because models often box intermediate results or restate an earlier guess before
   settling. Braces are matched by depth, so ``\\boxed{\\frac{1}{2}}`` yields
   ``\\frac{1}{2}``, not ``\\frac{1``.
2. ``#### X`` (GSM8K's own format, which few-shot prompted base models copy).
3. ``the answer is X`` (chain-of-thought prompts that ask for that phrase).

Nothing here judges correctness; that is `rlreason.rewards.math`.
"""
from __future__ import annotations

import re

__all__ = ["extract_answer", "extract_boxed", "gsm8k_gold"]

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GSM8K_RE = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS_RE = re.compile(r"the\s+(?:final\s+)?answer\s+is\s*:?", re.IGNORECASE)
# A comma between digit groups ("1,234,567"), not a list separator ("1, 2").
_THOUSANDS_COMMA_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# A sentence end: a period followed by whitespace (not "3.5"), or a final period.
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")


def _closing_brace(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` matching the ``{`` at `open_idx`, or None if unbalanced.

    Escaped braces (``\\{``, ``\\}``, as in a LaTeX set ``\\{1, 2\\}``) do not count, so
    they cannot close the box early.
    """
    depth = 0
    i = open_idx
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character, whatever it is
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty ``\\boxed{}``/``\\fbox{}`` in `text`.

    A box left unclosed (a completion truncated at max_tokens) is skipped rather than
    returned half-read.
    """
    for match in reversed(list(_BOX_RE.finditer(text))):
        close = _closing_brace(text, match.end() - 1)
        if close is None:
            continue
        content = text[match.end() : close].strip()
        if content:
            return content
    return None


def _strip_number_commas(text: str) -> str:
    return _THOUSANDS_COMMA_RE.sub("", text)


def _clean_tail(text: str) -> str:
    """Trim the decoration models put around a stated answer: ``$``, final period."""
    text = text.strip()
    while text and (text[-1] in ".$" or text[-1].isspace()):
        text = text[:-1]
    while text and (text[0] == "$" or text[0].isspace()):
        text = text[1:]
    return text


def extract_answer(text: str) -> str | None:
    """The model's final answer in `text`, or None if it never states one.

    Tries, in order: the last ``\\boxed{}``/``\\fbox{}``; the last ``#### X`` (thousands
    commas removed: ``#### 1,234`` -> ``1234``); the last "the answer is X"
    (case-insensitive, cut at the end of the sentence, ``$`` and the final period
    stripped).
    """
    if not text:
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed

    hashes = _GSM8K_RE.findall(text)
    if hashes:
        answer = _clean_tail(_strip_number_commas(hashes[-1]))
        if answer:
            return answer

    stated = list(_ANSWER_IS_RE.finditer(text))
    if stated:
        tail = text[stated[-1].end() :].lstrip(" \t").split("\n", 1)[0]
        end = _SENTENCE_END_RE.search(tail)
        if end is not None:
            tail = tail[: end.start()]
        answer = _clean_tail(_strip_number_commas(tail))
        if answer:
            return answer
    return None


def gsm8k_gold(answer_field: str) -> str:
    """The gold final answer of a GSM8K ``answer`` field (worked solution + ``#### N``).

    Returns the text after the last ``####`` with commas removed and whitespace stripped;
    a field without ``####`` is taken to be the bare answer already.
    """
    _, _, tail = answer_field.rpartition("####")
    return tail.replace(",", "").strip()
