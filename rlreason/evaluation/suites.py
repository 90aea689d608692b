"""Benchmark suites: one YAML file says everything needed to evaluate on a benchmark.

A suite names the data (a local file, or a hub dataset and split), which row fields hold
the problem, the answer and an id, how the prompt is built, how answers are graded, and
which fields to break the results down by. Adding a benchmark is adding one YAML file;
the ones in `<repo>/evaluation/` are also built-in names (``gsm8k``, ``math500``).

```yaml
name: math500
data: {source: ../data/math500.jsonl}   # or {source: HuggingFaceH4/MATH-500, split: test}
fields: {id_key: unique_id, prompt_key: problem, answer_key: answer, solution_key: solution}
prompt: {system_prompt: "Please reason step by step, ...", plain_template: "Problem: {prompt} ..."}
grading: {grader: math, timeout_s: 5}
group_by: [subject, level]
```

A relative ``data.source`` is relative to the YAML's folder (the rule recipes follow too),
so suites work from any working directory. Unknown keys are rejected with the
nearest valid names: a typo such as ``promt_key`` would otherwise silently fall back to a
default and evaluate the wrong field.

A plain data file (``--benchmark problems.jsonl``) becomes a suite too, built from the
command line's field flags, so both paths share one loader.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from rlreason.config import DATA_FILE_SUFFIXES as DATA_SUFFIXES
from rlreason.config import RowFields, explain_errors
from rlreason.data.loaders import DataError, FieldMap, load_problems
from rlreason.rewards import RewardError, resolve_reward
from rlreason.types import Problem

__all__ = [
    "DATA_SUFFIXES",
    "Suite",
    "SuiteError",
    "builtin_suites",
    "data_file_suite",
    "load_suite",
    "load_suite_problems",
    "resolve_benchmark",
    "suites_dir",
]

SUITE_SUFFIXES = (".yaml", ".yml")
# data_file_suite argument -> the `rlreason eval` flag that sets it (for error messages)
_FLAGS = {"prompt_key": "--problem-key", "answer_key": "--answer-key", "id_key": "--id-key",
          "answer_extractor": "--answer-extractor"}


class SuiteError(ValueError):
    """A benchmark that cannot be used: the message names the file, the key and what to do."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SuiteData(_Strict):
    source: str = Field(..., description="Local .jsonl/.parquet file (relative: to the YAML's folder, then "
                        "the working directory) or a hub dataset id ('openai/gsm8k:main' picks a config).")
    split: str = Field("test", description="Split of a hub dataset.")
    format: Literal["auto", "jsonl", "parquet", "hub"] = Field("auto", description="Force a format.")


class SuiteFields(RowFields):
    """A suite's `fields` block: the same keys as a recipe's `data` section."""


class SuitePrompt(_Strict):
    template: Literal["auto", "chat", "plain"] = Field(
        "auto", description="Tokenizer chat template, plain format string, or auto (chat if the tokenizer has one).")
    system_prompt: str | None = Field(None, description="System message (chat) / {system} (plain).")
    plain_template: str = Field("{prompt}", description="Prompt for template=plain: {prompt} and {system}.")


class SuiteGrading(_Strict):
    grader: str = Field("math", description="math (math-verify), exact_match, or 'module:function'.")
    timeout_s: float = Field(5.0, gt=0, description="Time bound per grading call.")

    @field_validator("grader")
    @classmethod
    def _known(cls, v: str) -> str:
        try:
            resolve_reward(v)
        except RewardError as e:
            raise ValueError(str(e)) from None
        return v


class Suite(_Strict):
    """One benchmark: data, field mapping, prompt, grading and grouping."""

    name: str = Field(..., description="Benchmark name, as shown in reports.")
    description: str = Field("", description="One line for humans.")
    data: SuiteData
    fields: SuiteFields = Field(default_factory=SuiteFields)
    prompt: SuitePrompt = Field(default_factory=SuitePrompt)
    grading: SuiteGrading = Field(default_factory=SuiteGrading)
    group_by: list[str] = Field(default_factory=list, description="Row fields to break the metrics down by.")

    _path: Path | None = PrivateAttr(None)  # the YAML it came from (relative sources resolve against it)

    @property
    def path(self) -> Path | None:
        return self._path


# --------------------------------------------------------------------------- built-ins


def suites_dir() -> Path:
    """`<repo root>/evaluation`: the shipped suites (repo root holds the `rlreason` package)."""
    return Path(__file__).resolve().parents[2] / "evaluation"


def builtin_suites() -> dict[str, Path]:
    """Built-in benchmark names -> their suite YAML (every YAML in `suites_dir()`)."""
    folder = suites_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix in SUITE_SUFFIXES}


# --------------------------------------------------------------------------- loading


def _explain(err: ValidationError, source: Path) -> SuiteError:
    return SuiteError(f"{source}: invalid benchmark suite\n  " + "\n  ".join(explain_errors(err, Suite)))


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite YAML; SuiteError naming the file and the bad key."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: no such suite file (resolved to {path.resolve()})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SuiteError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: expected a mapping with keys name, data, fields, prompt, grading, group_by; "
                         f"got {type(raw).__name__}")
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as e:
        raise _explain(e, path) from None
    suite._path = path.resolve()
    return suite


def data_file_suite(
    path: str | Path,
    *,
    prompt_key: str | None = None,
    answer_key: str | None = None,
    id_key: str | None = None,
    answer_extractor: str | None = None,
) -> Suite:
    """A suite for a bare JSONL / parquet file: fields from the arguments (None: defaults)."""
    fields = {k: v for k, v in {"prompt_key": prompt_key, "answer_key": answer_key, "id_key": id_key,
                                "answer_extractor": answer_extractor}.items() if v is not None}
    try:
        return Suite(name=Path(path).stem, data=SuiteData(source=str(path)), fields=SuiteFields(**fields))
    except ValidationError as e:
        raise _explain(e, Path(path)) from None


def resolve_benchmark(spec: str, **data_file_fields: str | None) -> Suite:
    """`--benchmark`: a built-in name, a suite YAML, or a data file (with field flags).

    Field flags (prompt_key, answer_key, id_key, answer_extractor) only apply to a data
    file; with a suite they would silently disagree with it, so they are an error.
    """
    given = {k: v for k, v in data_file_fields.items() if v is not None}
    builtins = builtin_suites()
    suffix = Path(spec).suffix.lower()
    if suffix in DATA_SUFFIXES:
        if not Path(spec).is_file():
            raise SuiteError(f"--benchmark {spec}: no such data file (resolved to {Path(spec).resolve()})")
        return data_file_suite(spec, **given)
    if given:
        flags = ", ".join(_FLAGS.get(k, k) for k in given)
        raise SuiteError(f"--benchmark {spec}: {flags} can only be used with a data file (.jsonl/.parquet); "
                         "a suite sets its fields in its YAML")
    if suffix in SUITE_SUFFIXES:
        return load_suite(spec)
    if spec in builtins:
        return load_suite(builtins[spec])
    names = ", ".join(builtins) if builtins else f"none: {suites_dir()} is missing"
    raise SuiteError(
        f"unknown benchmark {spec!r}: expected a built-in name ({names}), a suite YAML (.yaml), "
        "or a data file (.jsonl/.parquet) with --problem-key/--answer-key"
    )


# --------------------------------------------------------------------------- problems


def _is_local(suite: Suite) -> bool:
    fmt = suite.data.format
    return fmt in ("jsonl", "parquet") or (fmt == "auto" and Path(suite.data.source).suffix.lower() in DATA_SUFFIXES)


def resolve_source(suite: Suite) -> str:
    """The data source to load: a local path resolved as documented, or the hub id as is."""
    source = suite.data.source
    if not _is_local(suite) or Path(source).is_absolute():
        return source
    # a suite file: relative to its folder; a suite built from the command line: to the cwd
    candidate = (suite.path.parent / source if suite.path is not None else Path(source)).resolve()
    if candidate.is_file():
        return str(candidate)
    where = f"{suite.path}: " if suite.path else ""
    rule = " (relative to the suite's folder)" if suite.path is not None else ""
    raise DataError(f"{where}data.source {source!r}: no such file; looked at {candidate}{rule}")


def load_suite_problems(suite: Suite, *, limit: int | None = None) -> list[Problem]:
    """The suite's problems (the first `limit` when given); group_by fields kept as metadata."""
    f = suite.fields
    fields = FieldMap.from_settings(f, metadata_keys=list(suite.group_by))
    return load_problems(resolve_source(suite), fields, split=suite.data.split, limit=limit,
                         format=suite.data.format)
