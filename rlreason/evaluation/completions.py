"""Read a completions file: other systems' (or earlier runs') outputs, to grade without a model.

One JSON object per line: ``{"id": ..., "completions": ["...", ...]}``. A string ``id`` is
the benchmark row's id; an integer ``id`` is the row's 0-based index in the benchmark file
(for data without ids). Other keys are ignored, so an `rlreason eval` samples.jsonl is a
valid completions file. Every problem must have the same number of completions.

A mismatch is an error naming the file and line, never a silent skip: grading 490 of
500 problems, or a file written for another benchmark, would report a wrong number.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rlreason.data.loaders import DataError, iter_jsonl
from rlreason.types import Problem

__all__ = ["read_completions"]


def _row_problem(rid: object, where: str, problems: Sequence[Problem], by_id: dict[str, int],
                 benchmark: str) -> int:
    """Index of the problem a row's id names."""
    if isinstance(rid, str):
        if rid in by_id:
            return by_id[rid]
        examples = ", ".join(repr(p.id) for p in problems[:3])
        raise DataError(f"{where}: unknown id {rid!r}: benchmark {benchmark!r} has no such problem "
                        f"(its ids look like {examples}; an integer id is a 0-based row index)")
    if isinstance(rid, int) and not isinstance(rid, bool):
        if 0 <= rid < len(problems):
            return rid
        raise DataError(f"{where}: unknown id {rid}: as a row index it must be 0..{len(problems) - 1} "
                        f"(benchmark {benchmark!r} has {len(problems)} problems)")
    raise DataError(f"{where}: 'id' should be a problem id (string) or a 0-based row index (integer), "
                    f"got {type(rid).__name__}: {rid!r:.80}")


def read_completions(path: str | Path, problems: Sequence[Problem], *, benchmark: str = "") -> dict[str, list[str]]:
    """Problem id -> its completions, for the rows of `path`.

    `problems` is the whole benchmark (ids and indices are looked up in it). Raises
    DataError for a missing file, invalid JSON, a row without ``id``/``completions``, an
    unknown id, a problem given twice, or rows with different numbers of completions.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--completions {path}: no such file (resolved to {path.resolve()})")
    by_id = {p.id: i for i, p in enumerate(problems)}
    out: dict[str, list[str]] = {}
    first_seen: dict[str, str] = {}
    n_expected: tuple[int, str] | None = None  # (n, where it was set)
    for where, row in iter_jsonl(path, 'one object {"id": ..., "completions": [...]} per line'):
        if not isinstance(row, dict) or "id" not in row or "completions" not in row:
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(f'{where}: expected an object with "id" and "completions", got {got}')
        pid = problems[_row_problem(row["id"], where, problems, by_id, benchmark)].id
        texts = row["completions"]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise DataError(f"{where}: 'completions' should be a non-empty list of strings, got {texts!r:.80}")
        if pid in out:
            raise DataError(f"{where}: problem {pid!r} already has completions ({first_seen[pid]})")
        if n_expected is None:
            n_expected = (len(texts), where)
        elif len(texts) != n_expected[0]:
            raise DataError(f"{where}: {len(texts)} completions, but {n_expected[1]} has {n_expected[0]}; "
                            "every problem needs the same number")
        out[pid] = texts
        first_seen[pid] = where
    if not out:
        raise DataError(f"{path}: no completions rows")
    return out
