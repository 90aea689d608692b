"""Load task problems from local JSONL / parquet files or a Hugging Face hub dataset.

Every row becomes a `rlreason.types.Problem`. Which row fields hold the prompt, answer,
solution, id and metadata is described by a `FieldMap`. Bad data fails loudly with a
`DataError` that names the file (or hub id), the line (JSONL, 1-based) or row index
(parquet / hub, 0-based) and what was expected, so a broken dataset is fixed at load time
and not discovered halfway through a training run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlreason.config import RowFields
from rlreason.rewards.extract import extract_boxed, gsm8k_gold
from rlreason.types import Problem

__all__ = [
    "ANSWER_EXTRACTORS",
    "DataError",
    "FieldMap",
    "extract_answer",
    "load_problems",
]

ANSWER_EXTRACTORS = ("none", "gsm8k", "boxed")
FORMATS = ("auto", "jsonl", "parquet", "hub")
_JSONL_SUFFIXES = (".jsonl", ".json")
_PARQUET_SUFFIXES = (".parquet",)


class DataError(ValueError):
    """A dataset could not be loaded: the message names the source, the row and the problem."""


@dataclass
class FieldMap:
    """Which row fields become which `Problem` fields.

    id_key: field holding a unique id; None -> ids are "{source_name}-{index}" (index is
      the 0-based row index; source_name is the file stem or the hub id's last part).
    prompt_key: field holding the prompt text. Required unless `messages_key` is set (then
      it is used when present).
    messages_key: field holding a chat, a list of {"role", "content"} dicts.
    answer_key: field holding the reference answer (non-empty; numbers become strings);
      None: the data has no labels (label-free rewards), every answer is "".
    solution_key: field holding an oracle worked solution.
    answer_extractor: "none" keeps the answer field as is; "gsm8k" keeps the text after the
      last "####" with commas removed (and uses the full answer field as the solution when
      `solution_key` is None); "boxed" keeps the content of the last \\boxed{...}.
    metadata_keys: fields copied into `Problem.metadata`.

    Every configured key must be present in every row; a missing one is a `DataError`.
    """

    id_key: str | None = None
    prompt_key: str = "prompt"
    messages_key: str | None = None
    answer_key: str | None = "answer"
    solution_key: str | None = None
    answer_extractor: str = "none"
    metadata_keys: list[str] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: Any, **extra: Any) -> FieldMap:
        """The mapping a recipe's `data` section or a suite's `fields` block spells out
        (same attribute names), plus `extra` (e.g. metadata_keys)."""
        return cls(**{k: getattr(settings, k) for k in RowFields.model_fields}, **extra)

    def __post_init__(self) -> None:
        if self.answer_extractor not in ANSWER_EXTRACTORS:
            raise ValueError(
                f"data.answer_extractor={self.answer_extractor!r} is not one of {ANSWER_EXTRACTORS}"
            )
        if isinstance(self.metadata_keys, str):
            raise TypeError(
                f"data.metadata_keys must be a list of field names, got the string {self.metadata_keys!r}"
            )
        self.metadata_keys = list(self.metadata_keys)


# --------------------------------------------------------------------------- answers


def extract_answer(raw: str, extractor: str) -> str:
    """Apply an answer extractor to an answer field; raises ValueError when it finds nothing."""
    if extractor == "none":
        return raw.strip()
    if extractor == "gsm8k":
        if "####" not in raw:
            raise ValueError(
                "expected a '####' marker before the final answer (answer_extractor='gsm8k')"
            )
        ans = gsm8k_gold(raw)
        if not ans:
            raise ValueError("nothing after the last '####' (answer_extractor='gsm8k')")
        return ans
    if extractor == "boxed":
        ans = extract_boxed(raw)
        if ans is None:
            raise ValueError(
                "expected a balanced, non-empty \\boxed{...} in the answer (answer_extractor='boxed')"
            )
        return ans
    raise ValueError(
        f"unknown answer_extractor {extractor!r}; expected one of {ANSWER_EXTRACTORS}"
    )


# --------------------------------------------------------------------------- rows


def _fields_hint(row: dict[str, Any]) -> str:
    return f"the row has fields {sorted(map(str, row))}"


def _missing(where: str, key: str, what: str, row: dict[str, Any]) -> DataError:
    """A required field absent from the row, or present but empty (said apart: a row that
    lists the field among its fields must not be told the field is missing)."""
    if key in row:
        return DataError(f"{where}: field {key!r} is empty ({what}); got {row[key]!r:.60}")
    return DataError(
        f"{where}: missing required field {key!r} ({what}); {_fields_hint(row)}"
    )


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _as_text(value: Any, where: str, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(
        f"{where}: field {key!r} should be a string or a number, got {type(value).__name__}: {value!r:.80}"
    )


def _messages(value: Any, where: str, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{where}: field {key!r} should be a non-empty list of {{role, content}} dicts, got {value!r:.80}"
        )
    out = []
    for j, m in enumerate(value):
        if not (
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
        ):
            raise DataError(
                f"{where}: field {key!r} item {j} should be a dict with string 'role' and 'content', got {m!r:.80}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _row_to_problem(row: Any, fields: FieldMap, where: str, default_id: str) -> Problem:
    if not isinstance(row, dict):
        raise DataError(
            f"{where}: expected an object (a dict of fields), got {type(row).__name__}"
        )

    def required(key: str, what: str) -> Any:
        if key not in row or _is_empty(row[key]):
            raise _missing(where, key, what, row)
        return row[key]

    if fields.id_key is not None:
        pid = _as_text(
            required(fields.id_key, "mapped by data.id_key"), where, fields.id_key
        ).strip()
    else:
        pid = default_id

    messages = None
    prompt = None
    if fields.messages_key is not None:
        messages = _messages(
            required(fields.messages_key, "mapped by data.messages_key"),
            where,
            fields.messages_key,
        )
        if not _is_empty(row.get(fields.prompt_key)):
            prompt = _as_text(row[fields.prompt_key], where, fields.prompt_key)
    else:
        prompt = _as_text(
            required(fields.prompt_key, "mapped by data.prompt_key"), where, fields.prompt_key
        )

    raw_answer = answer = ""  # answer_key None: label-free data
    if fields.answer_key is not None:
        raw_answer = _as_text(
            required(fields.answer_key, "mapped by data.answer_key"), where, fields.answer_key
        )
        try:
            answer = extract_answer(raw_answer, fields.answer_extractor)
        except ValueError as e:
            raise DataError(
                f"{where}: field {fields.answer_key!r}: {e}; got {raw_answer!r:.120}"
            ) from None
        if not answer:
            raise DataError(f"{where}: field {fields.answer_key!r}: the extracted answer is empty "
                            f"(answer_extractor={fields.answer_extractor!r}); got {raw_answer!r:.120}")

    solution = None
    if fields.solution_key is not None:
        if fields.solution_key not in row:
            raise _missing(where, fields.solution_key, "mapped by data.solution_key", row)
        if row[fields.solution_key] is not None:
            solution = _as_text(row[fields.solution_key], where, fields.solution_key)
    elif fields.answer_extractor == "gsm8k":
        solution = raw_answer

    metadata = {}
    for key in fields.metadata_keys:
        if key not in row:
            raise _missing(where, key, "mapped by data.metadata_keys", row)
        metadata[key] = row[key]

    return Problem(
        id=pid,
        answer=answer,
        prompt=prompt,
        messages=messages,
        solution=solution,
        metadata=metadata,
    )


def _build(
    rows: Iterable[tuple[str, Any]], fields: FieldMap, source_name: str
) -> list[Problem]:
    """rows: (location, row) pairs in order. Builds problems and checks ids are unique."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for index, (where, row) in enumerate(rows):
        p = _row_to_problem(row, fields, where, f"{source_name}-{index}")
        if p.id in seen:
            raise DataError(
                f"{where}: duplicate id {p.id!r} (first seen at {seen[p.id]}); ids must be unique"
            )
        seen[p.id] = where
        problems.append(p)
    return problems


# --------------------------------------------------------------------------- sources


def iter_jsonl(path: Path, expected: str = "one JSON object per line") -> Iterator[tuple[str, Any]]:
    """(where, row) for each non-blank line of a JSON-lines file; `where` is "<path> line N".
    Invalid JSON or text stops with a DataError naming the file, the line and `expected`."""
    try:
        with path.open(encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path} line {lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); "
                                    f"expected {expected}") from None
                yield where, row
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 text ({e}); expected a JSON-lines file") from None


def _jsonl_rows(path: Path, limit: int | None) -> Iterator[tuple[str, Any]]:
    if limit == 0:
        return
    for n, item in enumerate(iter_jsonl(path), start=1):
        yield item
        if limit is not None and n >= limit:
            return  # before reading on: rows past the limit are never parsed


def _parquet_rows(path: Path, limit: int | None) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq  # lazily: pyarrow is heavy, needed only for .parquet files

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - any pyarrow failure means "not a readable parquet file"
        raise DataError(
            f"{path}: could not read as parquet ({type(e).__name__}: {e})"
        ) from None
    if limit is not None:
        table = table.slice(0, limit)
    for i, row in enumerate(table.to_pylist()):
        yield f"{path} row index {i}", row


def _hub_rows(source: str, split: str, limit: int | None) -> Iterator[tuple[str, Any]]:
    try:
        import datasets  # lazily: heavy, needed only for hub datasets (and its import errors are reported here)

        repo, _, subset = source.partition(":")  # "openai/gsm8k:main" names a config
        ds = datasets.load_dataset(repo, subset or None, split=split)
    except Exception as e:  # noqa: BLE001 - network, auth, missing dataset / split: all reported the same way
        raise DataError(
            f"could not load hub dataset {source!r} (split {split!r}): {type(e).__name__}: {e}. "
            "This environment may be offline: download the data and pass a local .jsonl or "
            ".parquet file path instead."
        ) from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    for i, row in enumerate(ds):
        yield f"hub dataset {source!r} (split {split!r}) row index {i}", row


def _resolve_format(source: str, format: str) -> str:
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not one of {FORMATS}")
    if format != "auto":
        return format
    suffix = Path(source).suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix in _PARQUET_SUFFIXES:
        return "parquet"
    if Path(source).exists():
        raise DataError(
            f"{source}: cannot tell the format from the name; expected a .jsonl/.json or .parquet "
            "file, or pass format='jsonl' | 'parquet' | 'hub'"
        )
    return "hub"


def _load_problems(
    source: str | Path,
    fields: FieldMap,
    *,
    split: str = "train",
    limit: int | None = None,
    format: str = "auto",
    source_name: str | None = None,
) -> list[Problem]:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    source = str(source)
    fmt = _resolve_format(source, format)
    if fmt == "hub":
        name = source_name or source.rstrip("/").split("/")[-1]
        return _build(_hub_rows(source, split, limit), fields, name)
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file (resolved to {path.resolve()})")
    if not path.is_file():
        raise DataError(f"{path}: is not a file; expected a {fmt} file")
    name = source_name or path.stem
    rows = _jsonl_rows(path, limit) if fmt == "jsonl" else _parquet_rows(path, limit)
    problems = _build(rows, fields, name)
    if not problems and limit != 0:
        raise DataError(f"{path}: no problems in the file (no rows); expected one {fmt} row per problem")
    return problems


def load_problems(
    source: str,
    fields: FieldMap,
    *,
    split: str = "train",
    limit: int | None = None,
    format: str = "auto",
) -> list[Problem]:
    """Load problems from a local file or a hub dataset.

    source: a local path (".jsonl"/".json" = JSON lines, ".parquet") or a hub dataset id
      (anything that is not an existing path and has no such suffix).
    fields: how row fields map onto `Problem` fields.
    split: the hub split to load (ignored for local files).
    limit: keep only the first `limit` rows (blank JSONL lines are not rows).
    format: "auto" (from the suffix), or force "jsonl" | "parquet" | "hub".

    Raises DataError for a missing file, invalid JSON, a missing / empty required field,
    a duplicate id, or a hub dataset that cannot be loaded.
    """
    return _load_problems(source, fields, split=split, limit=limit, format=format)
