"""Run an evaluation: (generate ->) grade -> per-problem records -> metrics.

Two entry points share everything after generation:

- `evaluate_problems(engine, tokenizer, problems, encode, n=, sampling=, grader=)` samples
  with any `RolloutEngine` (the trainer passes its own, mid-training) and grades;
- `score_completions(problems, completions, grader=)` grades completions produced
  elsewhere (another system, an earlier run's samples.jsonl).

Because the second is literally the back half of the first, a rescored file and a live
run with the same completions give the same numbers, and outputs of any system are judged
by the same grader.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlreason.evaluation.grading import GradedProblem, Grader
from rlreason.evaluation.metrics import aggregate, default_ks, group_metrics
from rlreason.evaluation.progress import EvalProgress
from rlreason.types import Problem, SamplingParams

__all__ = ["EvalResult", "evaluate_problems", "score_completions"]


@dataclass
class EvalResult:
    """What an evaluation produced.

    metrics: {"pass@1": .., "pass@k": .., "maj@k": ..} averaged over problems.
    by_group: {field: {value: {"n_problems": .., "pass@1": .., ...}}} for each group_by field.
    records: one dict per problem (id, prompt, gold, completions, answers, correct, ...),
      what samples.jsonl holds.
    grader_errors: samples whose grading raised or timed out (each counted wrong).
    vote_errors: answer comparisons that failed during majority-vote clustering.
    generation: sampling statistics (model mode only): tokens, truncation, throughput.
    """

    n: int
    ks: list[int]
    metrics: dict[str, float]
    by_group: dict[str, dict[str, dict[str, float]]]
    records: list[dict[str, Any]]
    grader_errors: int
    vote_errors: int
    generation: dict[str, float] | None = None
    wall_time_s: float = 0.0

    @property
    def n_problems(self) -> int:
        return len(self.records)


@dataclass
class _Collector:
    """Grades problems as they arrive (progress can show running accuracy), then aggregates."""

    grader: Grader
    group_by: Sequence[str]
    progress: EvalProgress | None
    records: list[dict[str, Any]] = field(default_factory=list)
    graded: list[GradedProblem] = field(default_factory=list)
    groups: list[dict[str, str]] = field(default_factory=list)

    def add(self, problem: Problem, completions: list[str], prompt: str, extra: dict[str, Any] | None = None) -> None:
        g = self.grader.grade_problem(problem, completions)
        record: dict[str, Any] = {
            "id": problem.id, "prompt": prompt, "gold": problem.answer, "completions": completions,
            "answers": g.answers, "correct": g.correct, "n_correct": sum(g.correct),
        }
        if any(e is not None for e in g.errors):
            record["grader_errors"] = g.errors
        if problem.metadata:
            record["metadata"] = problem.metadata
        record.update(extra or {})
        self.records.append(record)
        self.graded.append(g)
        self.groups.append({f: str(problem.metadata[f]) for f in self.group_by if f in problem.metadata})
        if self.progress is not None:
            self.progress.update(problems=1, samples=len(completions), correct=sum(g.correct))

    def result(self, ks: Sequence[int] | None, started: float) -> EvalResult:
        ns = {len(g.correct) for g in self.graded}
        if len(ns) > 1:
            raise ValueError(f"every problem needs the same number of completions, got {sorted(ns)}")
        n = ns.pop() if ns else 0
        ks = list(ks) if ks is not None else (default_ks(n) if n else [])
        if ks and not all(1 <= k <= n for k in ks):
            raise ValueError(f"ks={ks}: every k must be between 1 and n={n}")
        correct = [g.correct for g in self.graded]
        votes = [g.votes for g in self.graded]
        return EvalResult(
            n=n, ks=ks, metrics=aggregate(correct, votes, ks),
            by_group=group_metrics(self.groups, correct, votes, ks, self.group_by),
            records=self.records,
            grader_errors=sum(e is not None for g in self.graded for e in g.errors),
            vote_errors=sum(g.vote_errors for g in self.graded),
            wall_time_s=time.perf_counter() - started,
        )


def score_completions(
    problems: Sequence[Problem],
    completions: Sequence[Sequence[str]],
    grader: Grader,
    *,
    group_by: Sequence[str] = (),
    ks: Sequence[int] | None = None,
    prompts: Sequence[str] | None = None,
    progress: EvalProgress | None = None,
) -> EvalResult:
    """Grade given completions: completions[i] are problem i's n samples (same n for all).

    prompts: what each problem's prompt was, for the records (default: the question text).
    ks: the k of pass@k / maj@k (default: `default_ks(n)`).
    """
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but completions for {len(completions)}")
    started = time.perf_counter()
    collector = _Collector(grader, list(group_by), progress)
    for i, (p, texts) in enumerate(zip(problems, completions)):
        collector.add(p, list(texts), prompts[i] if prompts is not None else p.question)
    return collector.result(ks, started)


def evaluate_problems(
    engine: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    encode: Callable[[Problem], list[int]],
    *,
    n: int,
    sampling: SamplingParams,
    grader: Grader,
    group_by: Sequence[str] = (),
    ks: Sequence[int] | None = None,
    chunk_size: int | None = None,
    progress: EvalProgress | None = None,
    preserve_rng: bool = True,
    generate: Callable[[list[Problem], list[list[int]], int, SamplingParams], list[list[Any]]] | None = None,
) -> EvalResult:
    """Sample `n` completions per problem with `engine`, grade them, and aggregate.

    engine: any RolloutEngine (`generate(prompt_token_ids, n, sampling)`).
    encode: problem -> prompt token ids (the trainer's own, so prompts match training).
    chunk_size: problems per `generate` call (default: all at once); smaller chunks let
      `progress` move during a long run (the engine still batches within a chunk).
    preserve_rng: restore the engine's sampling RNG afterwards, so evaluating in the
      middle of training does not change the training samples that follow.
    generate: (problems, prompt ids, n, sampling) -> completions per problem; default the
      engine's `generate`; multi-turn episodes pass rollout.episodes' generator.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 completions per problem, got {n}")
    started = time.perf_counter()
    chunk = max(1, chunk_size or len(problems) or 1)
    collector = _Collector(grader, list(group_by), progress)
    state = engine.rng_state() if preserve_rng else None
    n_tokens = n_truncated = 0
    gen_time = 0.0
    sp = sampling
    try:
        for start in range(0, len(problems), chunk):
            batch = list(problems[start : start + chunk])
            prompt_ids = [encode(p) for p in batch]
            t0 = time.perf_counter()
            groups = generate(batch, prompt_ids, n, sp) if generate else engine.generate(prompt_ids, n, sp)
            gen_time += time.perf_counter() - t0
            sp = dataclasses.replace(sp, seed=None)  # a seed starts the stream once, not per chunk
            flat = [c for g in groups for c in g]
            texts = tokenizer.batch_decode([c.token_ids for c in flat], skip_special_tokens=True)
            prompts = tokenizer.batch_decode(prompt_ids, skip_special_tokens=False)
            for i, (p, g) in enumerate(zip(batch, groups)):
                n_tokens += sum(len(c.token_ids) for c in g)
                n_truncated += sum(c.finish_reason == "length" for c in g)
                extra = {"finish_reasons": [c.finish_reason for c in g],
                         "num_tokens": [len(c.token_ids) for c in g]}
                collector.add(p, texts[i * n : (i + 1) * n], prompts[i], extra)
    finally:
        if state is not None:
            engine.set_rng_state(state)
    result = collector.result(ks, started)
    total = max(1, len(problems) * n)
    result.generation = {
        "mean_completion_tokens": n_tokens / total,
        "frac_truncated": n_truncated / total,
        "generation_time_s": gen_time,
        "samples_per_s": len(problems) * n / max(gen_time, 1e-9),
        "tokens_per_s": n_tokens / max(gen_time, 1e-9),
    }
    return result


def held_out_metrics(cfg, engine: Any, tokenizer: Any, problems: Sequence[Problem],
                     encode: Callable[[Problem], list[int]], grader: Grader,
                     generate: Callable[..., list[list[Any]]] | None = None) -> dict[str, float]:
    """The trainer's periodic evaluation, through the same path as `rlreason eval`:
    `eval.n` samples per problem (greedy at eval.temperature 0), graded by `grader` (the
    recipe's first reward); keys `eval/...`, the sampler's RNG left where it was."""
    sampling = cfg.rollout.sampling(temperature=cfg.eval.temperature,
                                    max_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_completion_length)
    res = evaluate_problems(engine, tokenizer, problems, encode, n=cfg.eval.n, sampling=sampling,
                            grader=grader, preserve_rng=True, generate=generate)
    out = {f"eval/{k}": v for k, v in res.metrics.items()}
    out["eval/accuracy"] = res.metrics["pass@1"]
    out["eval/completion_length"] = (res.generation or {}).get("mean_completion_tokens", 0.0)
    return out
