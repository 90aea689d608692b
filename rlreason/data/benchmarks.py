"""Loaders for the benchmark files the project ships in its `data/` folder.

The directory is `$RLREASON_BENCHMARKS_DIR` when set, else `<repo root>/data` (repo root =
the folder that holds the `rlreason` package; data/README.md lists the files, their
sources and licenses).
"""

from __future__ import annotations

import os
from pathlib import Path

from rlreason.data.loaders import DataError, FieldMap, _load_problems
from rlreason.types import Problem

__all__ = ["ENV_VAR", "benchmarks_dir", "gsm8k", "math500"]

ENV_VAR = "RLREASON_BENCHMARKS_DIR"


def _default_dir() -> Path:
    repo_root = Path(__file__).resolve().parents[2]
    return (repo_root / "data").resolve()


def benchmarks_dir() -> Path:
    """The benchmarks directory; DataError naming the places looked at when it is missing."""
    default = _default_dir()
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            return path
        raise DataError(
            f"benchmarks directory not found: ${ENV_VAR}={env!r} is not a directory "
            f"(unset it to use the default {default}, which "
            f"{'exists' if default.is_dir() else 'does not exist either'})"
        )
    if default.is_dir():
        return default
    raise DataError(
        f"benchmarks directory not found: ${ENV_VAR} is not set and the default {default} "
        f"does not exist; set ${ENV_VAR} to the folder holding gsm8k_test.jsonl, math500.jsonl, ..."
    )


def _file(path: str | Path | None, name: str) -> Path:
    """`path` may be the file itself or a directory holding `name`; None -> benchmarks_dir()."""
    if path is None:
        return benchmarks_dir() / name
    p = Path(path)
    return p / name if p.is_dir() else p


GSM8K_FIELDS = FieldMap(
    prompt_key="question", answer_key="answer", answer_extractor="gsm8k"
)
MATH500_FIELDS = FieldMap(
    id_key="unique_id",
    prompt_key="problem",
    answer_key="answer",
    solution_key="solution",
    metadata_keys=["subject", "level"],
)


def gsm8k(path: str | Path | None = None, split: str = "test") -> list[Problem]:
    """GSM8K from `gsm8k_{split}.jsonl`: prompt = question, answer = the number after "####"
    (commas removed), solution = the full worked solution, id = "gsm8k-{split}-{i}".

    path: the jsonl file, or a directory holding it; None -> benchmarks_dir().
    """
    file = _file(path, f"gsm8k_{split}.jsonl")
    return _load_problems(
        file, GSM8K_FIELDS, format="jsonl", source_name=f"gsm8k-{split}"
    )


def math500(path: str | Path | None = None) -> list[Problem]:
    """MATH-500 from `math500.jsonl`: prompt = problem, answer = answer, solution = solution,
    metadata = {subject, level}, id = unique_id.

    path: the jsonl file, or a directory holding it; None -> benchmarks_dir().
    """
    return _load_problems(_file(path, "math500.jsonl"), MATH500_FIELDS, format="jsonl")
