"""What the three miniature experiments share, as evaluation/README.md fixes it: the seeds,
the scoring of a model on a problem set, the compute counts, the tuning rule, the
pre-declared cuts, the claims and the results file.

Why one module: the protocol is one text, so the code that carries it out is one place; a
rule changed here changes for every experiment at once, as an amendment would.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

TEST_SEEDS = tuple(range(8))
TUNING_SEEDS = (100, 101)
EVAL_SAMPLES = 8
MAX_TOKENS = 8


def runner_args(ap: argparse.ArgumentParser, name: str, quick_help: str = "smoke test: not the protocol") -> None:
    """The options every experiment script takes: --quick, --workers, --work (runs/NAME)
    and --out (evaluation/results/NAME.json)."""
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--workers", type=int, default=1, help="runs side by side, one thread each (protocol.pmap)")
    ap.add_argument("--work", default=f"runs/{name}")
    ap.add_argument("--out", default=str(HERE / "results" / f"{name}.json"))


def figure(ncols: int, figsize: tuple[float, float]):
    """(figure, axes) of one row of `ncols` plots, drawn off-screen."""
    import matplotlib  # lazily: only the scripts that plot need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=figsize)


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt  # lazily: as figure()

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_to_stderr(tag: str) -> Callable[[str], None]:
    return lambda s: print(f"  [{tag}] {s}", file=sys.stderr, flush=True)


def evaluate(model_dir: Path | str, problems, seed: int) -> dict[str, float]:
    """The protocol's unit of evaluation: 8 samples at temperature 1 (pass@1, pass@8) and
    one greedy decode (greedy accuracy), exact match, unguided."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.evaluation.grading import Grader
    from rlreason.evaluation.runner import evaluate_problems
    from rlreason.rollout.hf import HFEngine
    from rlreason.types import SamplingParams

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    engine = HFEngine(model, tok, seed=seed)
    encode = lambda p: tok(p.prompt, add_special_tokens=False)["input_ids"]  # noqa: E731
    grader = Grader("exact_match")
    sampled = evaluate_problems(engine, tok, problems, encode, n=EVAL_SAMPLES, grader=grader,
                                ks=[1, EVAL_SAMPLES],
                                sampling=SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS,
                                                        seed=seed))
    greedy = evaluate_problems(engine, tok, problems, encode, n=1, grader=grader,
                               sampling=SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    return {"pass@1": sampled.metrics["pass@1"], f"pass@{EVAL_SAMPLES}":
            sampled.metrics[f"pass@{EVAL_SAMPLES}"], "greedy": greedy.metrics["pass@1"],
            "eval_samples": len(problems) * (EVAL_SAMPLES + 1)}


# ------------------------------------------------------------------ compute accounting

def rl_compute(run_dir: Path, prompts_per_step: int, generations: int) -> dict[str, Any]:
    """Samples drawn, optimizer steps and tokens trained of a GRPO run, from its
    metrics.jsonl and, for a guided run, hardness.json (probes and ladder samples)."""
    from rlreason.logger import read_metrics

    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "reward" in r]
    per_step = prompts_per_step * generations
    out = {"steps": len(rows), "samples_training": per_step * len(rows),
           "tokens": round(sum(r["completion_length"] * per_step for r in rows)),
           "samples_probes": 0}
    hardness = run_dir / "hardness.json"
    if hardness.is_file():
        verdicts = json.loads(hardness.read_text())
        probes = sum(v["k"] for v in verdicts.values())
        # every hard problem's hint was sampled guidance.probe_samples times per rung tried
        # (a ladder of one rung here, so once): counted from the config the run saved
        import yaml

        g = yaml.safe_load((run_dir / "config.yaml").read_text())["guidance"]
        ladder = sorted(g["ladder"])
        hard = [v for v in verdicts.values() if v.get("hard")]
        # rungs are sampled shortest first until one works (all of them when none does)
        tried = sum(len(ladder) if not v.get("hint_works") else ladder.index(v["hint_fraction"]) + 1
                    for v in hard)
        out["samples_probes"] = probes + tried * g["probe_samples"]
        out["hard_problems"] = len(hard)
        out["hints_that_work"] = sum(1 for v in hard if v.get("hint_works"))
        out["hint_fractions"] = {str(f): sum(1 for v in hard if v.get("hint_fraction") == f) for f in ladder}
    out["samples"] = out["samples_training"] + out["samples_probes"]
    return out


def finished(run_dir: Path, cfg) -> bool:
    """Whether `run_dir` holds a finished run of this very recipe (final/ saved, and every
    setting its config.yaml records equal to `cfg`'s; fields added to the schema since, at
    their defaults, are not compared). A rerun of an experiment then reuses it instead of
    training again: the numbers are those of the same deterministic run."""
    import yaml

    saved_file, final = run_dir / "config.yaml", run_dir / "final" / "config.json"
    if not (saved_file.is_file() and final.is_file()):
        return False
    saved = yaml.safe_load(saved_file.read_text())
    now = yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json")))

    def same(a, b) -> bool:
        if isinstance(a, dict) and isinstance(b, dict):
            return all(same(a[k], b[k]) for k in a if k in b)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b

    return same(saved, now)


def sft_compute(run_dir: Path, examples_per_step: int) -> dict[str, Any]:
    """Optimizer steps, examples and target tokens of an SFT/OTR run (metrics.jsonl)."""
    from rlreason.logger import read_metrics

    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    tokens = [r.get("target_tokens") for r in rows]
    out = {"steps": len(rows), "examples": examples_per_step * len(rows),
           "median_step_s": statistics.median(r["step_time_s"] for r in rows)}
    out["tokens"] = sum(tokens) if all(t is not None for t in tokens) else None
    if out["tokens"] is None:
        out["tokens_note"] = "metrics.jsonl has no per-step target-token count"
    return out


def sum_compute(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-arm totals over seeds: the numeric fields summed, None where any part lacks it."""
    keys = {k for p in parts for k, v in p.items()
            if isinstance(v, (int, float)) and not k.endswith("median_step_s")}  # a sum of medians means nothing
    out: dict[str, Any] = {}
    for k in sorted(keys):
        vals = [p.get(k) for p in parts]
        out[k] = None if any(v is None for v in vals) else sum(vals)
    return out


# ------------------------------------------------------------------ tuning and cuts

def pick(grid: Sequence[Any], scores: dict[int, list[float]]) -> tuple[int, list[float]]:
    """Index of the grid entry with the best mean validation score (a tie goes to the first
    entry) and the means. `scores[i]` holds entry i's score on each tuning seed."""
    means = [statistics.fmean(scores[i]) for i in range(len(grid))]
    best = max(range(len(grid)), key=lambda i: (means[i], -i))
    return best, means


def apply_cuts(level: int, tuning_seeds: Sequence[int], grids: dict[str, list],
               steps: dict[str, int], factor: float, floors: dict[str, int]):
    """The pre-declared reduction, in its order: 1 one tuning seed, 2 grids cut to their
    first two entries, 3 every arm's steps scaled by `factor` (not below its floor)."""
    seeds = list(tuning_seeds[:1] if level >= 1 else tuning_seeds)
    grids = {k: (g[:2] if level >= 2 else list(g)) for k, g in grids.items()}
    if level >= 3:
        steps = {k: max(floors.get(k, 0), int(round(v * factor))) for k, v in steps.items()}
    return seeds, grids, dict(steps)


# ------------------------------------------------------------------ claims and results

def cpu() -> dict[str, Any]:
    """The CPU the numbers were measured on: model name and whether it has AVX-512."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = info.get("Flags", "")
    return {"model_name": info.get("Model name", platform.processor()).strip(),
            "avx512": "avx512f" in flags.split(), "avx2": "avx2" in flags.split(),
            "cores": info.get("CPU(s)", "").strip()}


def claim(text: str, metric: str, treatment: str, control: str,
          results: dict[int, dict[str, dict[str, float]]], key: Callable[[dict], float]):
    """`paired_claim` over the test seeds; `results[seed][arm]` is an arm's evaluation."""
    from rlreason.evaluation.claims import paired_claim

    by_seed = {s: {arm: key(r) for arm, r in arms.items()} for s, arms in results.items()}
    if len(by_seed) < 2:  # a smoke test (--quick): no interval from one seed
        return {"claim": text, "metric": metric, "arms": [treatment, control], "n_seeds": len(by_seed),
                "diff_by_seed": [a[treatment] - a[control] for a in by_seed.values()], "verdict": None,
                "note": "one seed: no interval, no verdict"}
    out = paired_claim(text, metric, treatment, control, by_seed)
    if out["n_seeds"] < len(TEST_SEEDS):
        out["note"] = f"only {out['n_seeds']} of {len(TEST_SEEDS)} seeds hold both arms"
    return out


def summary(results: dict[int, dict[str, dict[str, float]]], metrics: Sequence[str]):
    """Mean and per-seed value of each metric, per arm (every arm and seed reported)."""
    arms = sorted({a for r in results.values() for a in r})
    return {a: {m: {"mean": statistics.fmean(results[s][a][m] for s in results if a in results[s]),
                    "per_seed": {str(s): results[s][a][m] for s in results if a in results[s]}}
                for m in metrics} for a in arms}


def print_claims(claims: Sequence[dict[str, Any]]) -> None:
    """One line per claim: the paired difference, its interval and the verdict, or why none."""
    for c in claims:
        if c.get("verdict") is None:
            print(f"{c['claim']}: {c.get('note')}")
            continue
        print(f"{c['claim']}: diff {c['diff_mean']:+.3f} ci95 [{c['ci95'][0]:+.3f}, "
              f"{c['ci95'][1]:+.3f}] -> {c['verdict']}")


def write_results(path: Path, payload: dict[str, Any]) -> None:
    """Atomic write of a results file (a run cut short leaves the previous file whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def pmap(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int = 1) -> list[Any]:
    """`[fn(*job) for job in jobs]`, in order; with `workers > 1` in that many processes of one
    thread each. Why: the tiny models are too small for two threads to help each other, so two
    one-thread processes side by side do 1.55x the work of one two-thread process (measured on a
    2-core AMD EPYC without AVX-512: two 40-step quickstart runs took 2 x 102 s one after the
    other with 2 threads, 132 s side by side with 1 thread each). Runs are independent by
    design (own seed, own warm start, own directory), so only the float bits change, as on
    another CPU. `fn` must be a module-level function; spawn, not fork, because a forked
    OpenMP runtime can hang."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_thread) as pool:
        return list(pool.map(fn, *zip(*jobs)))


class Clock:
    """Wall time of an experiment, with named laps for the protocol block."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        self.laps[name] = round(time.time() - self.t0 - sum(self.laps.values()), 1)

    def total(self) -> float:
        return round(time.time() - self.t0, 1)
