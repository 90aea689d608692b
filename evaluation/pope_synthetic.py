"""POPE in miniature: does guidance on never-solved problems transfer to the bare problem?

A tiny Llama is warm-started on 2-digit additions whose lowest column never carries
(answer digits least-significant first; carries out of the tens column do occur, so it
knows "digit mod 10, then a carry digit"). Additions whose only carry is out of the units
column are the hard set: it never solves one (0 of 8 samples on every problem), since it
has never added a carry into the tens digit. Three arms with the same RL compute (steps x
prompts x generations), 3 seeds each:
  (a) plain GRPO on the hard set,
  (b) GRPO on all 2-digit additions (hard + easy mixed, 16% of them hard),
  (c) GRPO on the hard set with POPE guidance (oracle-prefix hints on hard problems,
      guided and unguided prompts 1:1).
Each final policy is evaluated unguided on 128 held-out hard problems: pass@1 and
pass@8 (8 samples, temperature 1), and greedy accuracy. (A first design, warm-start with
no carries at all and every carry problem as the hard set, left all three arms at 0: there
the hint supplied exactly the step the bare problem could not take, the units digit of
an overflowing column, so nothing learned under guidance was usable without it.)

    python evaluation/pope_synthetic.py            # ~10 min on 2 cores
    python evaluation/pope_synthetic.py --quick    # 1 seed, fewer steps (smoke test)

Writes evaluation/results/pope_synthetic.json and pope_synthetic.png.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

COMMON = [  # reruns replace the previous run's folders (train.overwrite_output_dir)
    "train.overwrite_output_dir=true", "model.name_or_path=tiny", "model.tiny.warmstart_data={carries: not_units}",
    "model.tiny.warmstart_steps=1500", "data.synthetic.difficulty=2",
    "rewards=[{name: exact_match}]", "rollout.max_completion_length=8",
    "algo.num_generations=8", "algo.beta=0.0", "algo.loss_type=dapo",
    "train.prompts_per_step=32", "train.micro_batch_size=256", "train.learning_rate=2e-4",
    "train.warmup_steps=5", "train.plot=false", "eval.num_problems=0",
    "data.synthetic.num_train=512", "data.synthetic.num_eval=0",
]
ARMS = {
    "plain_hard": ["data.synthetic.carries=units_only"],
    "mixed_easy_hard": ["data.synthetic.carries=any"],
    # answers are 2 characters: the hint is the first one (the units digit)
    "pope": ["data.synthetic.carries=units_only", "guidance.enabled=true", "guidance.probe_k=8",
             "guidance.ladder=[0.5]", "guidance.guided_ratio=0.5",
             # the protocol as it ran (results/pope_synthetic.json): the batch mixing and the
             # hint form of that time; the paper's twins/instruct defaults came later
             "guidance.batch=mixed", "guidance.style=prefill"],
}


HELD_OUT = "128 2-digit additions whose only carry is out of the units"


def held_out(n: int = 128):
    """Hard problems that no arm trains on."""
    from rlreason.config import load_config
    from rlreason.data.synthetic import synthetic_problems, synthetic_splits

    seen = set()
    for extra in ARMS.values():
        train, _ = synthetic_splits(load_config(None, [*COMMON, *extra]).data.synthetic)
        seen |= {p.prompt for p in train}
    return synthetic_problems("addition", n, 2, seed=999, split="pope-heldout",
                              carries="units_only", exclude=seen)


def evaluate(model_dir: Path, problems, seed: int) -> dict[str, float]:
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
    sampled = evaluate_problems(engine, tok, problems, encode, n=8, grader=grader, ks=[1, 8],
                                sampling=SamplingParams(temperature=1.0, max_tokens=8, seed=seed))
    greedy = evaluate_problems(engine, tok, problems, encode, n=1, grader=grader,
                               sampling=SamplingParams(temperature=0.0, max_tokens=8))
    return {"pass@1": sampled.metrics["pass@1"], "pass@8": sampled.metrics["pass@8"],
            "greedy": greedy.metrics["pass@1"]}


def run_arm(arm: str, seed: int, steps: int, out: Path, lr: float | None = None) -> dict:
    from rlreason.config import load_config
    from rlreason.logger import read_metrics
    from rlreason.trainer import train

    run_dir = out / f"{arm}-seed{seed}"
    cfg = load_config(None, [*COMMON, *ARMS[arm], f"train.max_steps={steps}",
                             f"train.seed={seed}", f"train.output_dir={run_dir}",
                             *([f"train.learning_rate={lr}"] if lr else [])])
    t0 = time.time()
    train(cfg, log=lambda s: print(f"  [{arm} seed {seed}] {s}", file=sys.stderr))
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "reward" in r]
    result = {"arm": arm, "seed": seed, "train_time_s": round(time.time() - t0, 1),
              "train_reward_first10": statistics.fmean(r["reward"] for r in rows[:10]),
              "train_reward_last10": statistics.fmean(r["reward"] for r in rows[-10:])}
    if arm == "pope":
        verdicts = json.loads((run_dir / "hardness.json").read_text())
        result["hard_problems"] = sum(v["hard"] for v in verdicts.values())
        result["probed"] = len(verdicts)
        result["solved_unguided_in_training"] = rows[-1].get("guided/solved_unguided")
        result["guided_reward_last10"] = statistics.fmean(
            r["guided/reward"] for r in rows[-10:] if r.get("guided/reward") is not None)
    result.update(evaluate(run_dir / "final", held_out(), seed))
    return result


def plot(summary: dict, path: Path) -> None:
    """Bars: mean over seeds; dots: each seed (outcomes are bimodal, so no std bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for j, metric in enumerate(["pass@1", "pass@8"]):
        xs = [i + 0.38 * j for i in range(len(arms))]
        ax.bar(xs, [summary[a][metric]["mean"] for a in arms], 0.38, label=metric, alpha=0.8)
        for x, a in zip(xs, arms):
            seeds = summary[a][metric]["per_seed"]
            ax.plot([x] * len(seeds), seeds, "k.", markersize=6)
    ax.set_xticks([i + 0.19 for i in range(len(arms))], arms)
    ax.set_ylabel("unguided accuracy, held-out hard")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--quick", action="store_true", help="1 seed, 60 steps")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from --out")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--lr", type=float, default=None, help="override train.learning_rate")
    ap.add_argument("--work", default="runs/pope_synthetic")
    ap.add_argument("--out", default=str(HERE / "results" / "pope_synthetic.json"))
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(Path(args.out).read_text())["summary"], Path(args.out).with_suffix(".png"))
        return
    if args.quick:
        args.seeds, args.steps = [0], 60
    work = Path(args.work)
    baseline = {"arm": "warm-start (no RL)"}
    results = []
    for seed in args.seeds:
        for arm in args.arms:
            r = run_arm(arm, seed, args.steps, work, args.lr)
            print(json.dumps(r), flush=True)
            results.append(r)
    from rlreason.config import load_config
    from rlreason.models import resolve_model_path

    cfg = load_config(None, COMMON)
    baseline.update(evaluate(Path(resolve_model_path(cfg.model, cfg.data.synthetic)), held_out(),
                             0))
    summary = {}
    for arm in args.arms:
        rows = [r for r in results if r["arm"] == arm]
        summary[arm] = {m: {"mean": statistics.fmean(r[m] for r in rows),
                            "std": statistics.pstdev(r[m] for r in rows),
                            "per_seed": [r[m] for r in rows]}
                        for m in ("pass@1", "pass@8", "greedy")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setup": {"common": COMMON, "arms": ARMS, "steps": args.steps,
                                         "seeds": args.seeds, "held_out": HELD_OUT},
                               "warm_start_only": baseline, "summary": summary,
                               "runs": results}, indent=1))
    plot(summary, out.with_suffix(".png"))
    print(json.dumps({"warm_start_only": baseline, "summary": {
        a: {m: round(v["mean"], 3) for m, v in s.items()} for a, s in summary.items()}}, indent=1))


if __name__ == "__main__":
    main()
