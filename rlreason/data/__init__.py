"""Datasets: loading problems from files / the hub, benchmarks, and prompt templates."""

from rlreason.data.benchmarks import benchmarks_dir, gsm8k, math500
from rlreason.data.loaders import DataError, FieldMap, extract_answer, load_problems
from rlreason.data.templates import build_prompt, encode_prompts, resolve_template

__all__ = [
    "DataError",
    "FieldMap",
    "benchmarks_dir",
    "build_prompt",
    "encode_prompts",
    "extract_answer",
    "gsm8k",
    "load_problems",
    "math500",
    "resolve_template",
]
