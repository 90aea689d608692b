"""Benchmark evaluation: sample (or read) completions, grade them, report pass@k / maj@k.

`rlreason eval` is the command (see `command`); `evaluate_problems` is the same evaluation
as a function, for a trainer that wants benchmark numbers with its own engine mid-run.

  suites.py       benchmark suites (YAML, pydantic): data, fields, prompt, grader, group_by
  completions.py  reading a completions file (rescoring without a model)
  loading.py      model / training checkpoint / base + LoRA adapter loading
  grading.py      per-sample correctness with timeouts and error counting; answer clusters
  metrics.py      pass@k (unbiased), maj@k, by-group aggregation (pure functions)
  runner.py       generate -> grade -> records -> EvalResult
  progress.py     progress bar / plain progress lines
  report.py       summary.json, samples.jsonl, results.md, compare table
  command.py      the command-line glue
"""
from rlreason.evaluation.grading import GradedProblem, Grader
from rlreason.evaluation.metrics import aggregate, default_ks, maj_at_k, majority_vote, pass_at_k
from rlreason.evaluation.runner import EvalResult, evaluate_problems, score_completions
from rlreason.evaluation.suites import (
    Suite,
    SuiteError,
    builtin_suites,
    load_suite,
    load_suite_problems,
    resolve_benchmark,
)

__all__ = [
    "EvalResult",
    "GradedProblem",
    "Grader",
    "Suite",
    "SuiteError",
    "aggregate",
    "builtin_suites",
    "default_ks",
    "evaluate_problems",
    "load_suite",
    "load_suite_problems",
    "maj_at_k",
    "majority_vote",
    "pass_at_k",
    "resolve_benchmark",
    "score_completions",
]
