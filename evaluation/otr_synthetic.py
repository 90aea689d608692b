"""SFT vs one-token rollout (OTR) in miniature, same data and compute, 3 seeds.

A tiny Llama, first warm-started with 300 supervised steps (the stand-in for a pretrained
model: OTR, like any policy gradient, needs a policy that already puts some mass on the
target tokens; from a random initialisation it did not learn at all in 500 steps), is
trained further with `rlreason sft` on 1- and 2-digit additions (answer digits
least-significant first), once with `sft.loss=sft` and once with `sft.loss=otr` (K=256
samples per position, tau=1.2, beta=-0.1), for the same number of steps and batches.
Both are evaluated on held-out 2-digit problems (in distribution) and on 3-digit problems
(a harder level never trained on): greedy accuracy, and pass@1 / pass@8 of 8 samples at
temperature 1.

    python evaluation/otr_synthetic.py          # ~5 min on 2 cores
    python evaluation/otr_synthetic.py --quick  # 1 seed, fewer steps

Writes evaluation/results/otr_synthetic.json; also times an SFT step against an OTR step.
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
sys.path.insert(0, str(HERE))

COMMON = [  # reruns replace the previous run's folders (train.overwrite_output_dir)
    "train.overwrite_output_dir=true", "model.name_or_path=tiny", "model.tiny.warmstart_steps=300",
    "data.synthetic.difficulty=2",
    "data.synthetic.min_difficulty=1", "data.synthetic.num_train=4000",
    "data.synthetic.num_eval=0", "rewards=[{name: exact_match}]",
    "rollout.max_completion_length=8", "train.prompts_per_step=64", "train.micro_batch_size=64",
    "train.learning_rate=1e-3", "train.warmup_steps=20", "train.plot=false",
    "eval.num_problems=0", "sft.otr_num_samples=256", "sft.otr_temperature=1.2",
    "sft.otr_beta=-0.1",
]


def held_out(level: int, n: int = 128):
    from rlreason.data.synthetic import synthetic_problems

    return synthetic_problems("addition", n, level, seed=777, split="otr-heldout")


def run(loss: str, seed: int, steps: int, work: Path) -> dict:
    from pope_synthetic import evaluate

    from rlreason.config import load_config
    from rlreason.logger import read_metrics
    from rlreason.sft import train_sft

    out = work / f"{loss}-seed{seed}"
    cfg = load_config(None, [*COMMON, f"sft.loss={loss}", f"train.max_steps={steps}",
                             f"train.seed={seed}", f"model.tiny.seed={seed}",
                             f"train.output_dir={out}"])
    t0 = time.time()
    train_sft(cfg, log=lambda s: print(f"  [{loss} seed {seed}] {s}", file=sys.stderr))
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    result = {"loss": loss, "seed": seed, "train_time_s": round(time.time() - t0, 1),
              "median_step_s": statistics.median(r["step_time_s"] for r in rows),
              "final_gt_prob": rows[-1]["gt_prob"]}
    for name, level in (("in_dist_2digit", 2), ("harder_3digit", 3)):
        result[name] = evaluate(out / "final", held_out(level), seed)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", default="runs/otr_synthetic")
    ap.add_argument("--out", default=str(HERE / "results" / "otr_synthetic.json"))
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.steps = [0], 100
    results = [run(loss, seed, args.steps, Path(args.work))
               for seed in args.seeds for loss in ("sft", "otr")]
    summary: dict = {}
    for loss in ("sft", "otr"):
        rows = [r for r in results if r["loss"] == loss]
        summary[loss] = {"median_step_s": statistics.median(r["median_step_s"] for r in rows)}
        for split in ("in_dist_2digit", "harder_3digit"):
            summary[loss][split] = {
                m: {"mean": statistics.fmean(r[split][m] for r in rows),
                    "std": statistics.pstdev(r[split][m] for r in rows),
                    "per_seed": [r[split][m] for r in rows]}
                for m in ("greedy", "pass@1", "pass@8")}
    summary["otr_over_sft_step_time"] = summary["otr"]["median_step_s"] / summary["sft"]["median_step_s"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setup": {"common": COMMON, "steps": args.steps, "seeds": args.seeds},
                               "summary": summary, "runs": results}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
