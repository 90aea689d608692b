"""Write a benchmark's reference solutions as a completions file, to check the grader.

A correct grader must accept the benchmark's own worked solutions (GSM8K's ``answer`` field
ending ``#### N``, MATH-500's ``solution`` ending in ``\\boxed{}``) and reject them when
they are paired with the wrong problems. Both checks run through the same path as any
other system's outputs:

    python evaluation/make_gold_completions.py math500 gold_math500.jsonl
    rlreason eval --benchmark math500 --completions gold_math500.jsonl --output runs/eval/gold-math500

    # control: every problem gets another problem's solution (with a different gold answer)
    python evaluation/make_gold_completions.py math500 shuffled_math500.jsonl --shuffle

`benchmark` is anything `rlreason eval --benchmark` accepts whose problems have a solution
(a built-in name or a suite YAML).
"""
from __future__ import annotations

import argparse
import json
import random
import sys

from rlreason.evaluation.suites import load_suite_problems, resolve_benchmark
from rlreason.rewards import normalize_answer
from rlreason.types import Problem


def mismatched_order(problems: list[Problem], seed: int = 0) -> list[int]:
    """A shuffle in which no problem gets a solution whose gold answer equals its own.

    A plain random shuffle pairs some problems with solutions that happen to share the gold
    answer (GSM8K has many answers of 5 or 10: about 1% of a random shuffle), and those are
    genuinely correct. Swapping them away makes the shuffled score measure only the
    grader's false positives.
    """
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    key = [normalize_answer(p.answer) for p in problems]
    for i in range(len(order)):
        if key[order[i]] == key[i]:
            for j in range(len(order)):
                if key[order[j]] != key[i] and key[order[i]] != key[j]:
                    order[i], order[j] = order[j], order[i]
                    break
    return order


def as_written(answer: str) -> str:
    """`27.0` -> `27`: how a model states an integral answer stored as a float."""
    try:
        value = float(answer)
    except ValueError:
        return answer
    return str(int(value)) if value.is_integer() else answer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("benchmark", help="built-in name (gsm8k, math500, aime24, amc23) or suite YAML")
    p.add_argument("output", help="completions JSONL to write")
    p.add_argument("--shuffle", action="store_true", help="pair each problem with another problem's solution")
    p.add_argument("--seed", type=int, default=0, help="seed of --shuffle")
    p.add_argument("--from-answers", action="store_true",
                   help="for benchmarks without worked solutions (AMC): write 'The answer is \\boxed{A}' with "
                   "A the gold answer as a model would write it (an integral float such as 27.0 as 27)")
    args = p.parse_args(argv)

    problems = load_suite_problems(resolve_benchmark(args.benchmark))
    if args.from_answers:
        for q in problems:
            q.solution = f"The answer is $\\boxed{{{as_written(q.answer)}}}$."
    missing = [q.id for q in problems if not q.solution]
    if missing:
        print(f"error: {len(missing)} problems of {args.benchmark} have no solution (first: {missing[0]!r}); "
              "the suite needs fields.solution_key (or answer_extractor: gsm8k)", file=sys.stderr)
        return 2
    order = mismatched_order(problems, args.seed) if args.shuffle else range(len(problems))
    with open(args.output, "w", encoding="utf-8") as f:
        for q, j in zip(problems, order):
            f.write(json.dumps({"id": q.id, "completions": [problems[j].solution]}, ensure_ascii=False) + "\n")
    print(f"wrote {len(problems)} rows to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
