"""The GRPO family side by side on the quickstart task, at the same number of samples drawn.

Arms (each a few overrides of recipes/quickstart.yaml, whose loss is dapo's token mean):
  grpo          loss_type grpo (per-sequence mean), group-scaled advantages
  rloo          advantage_estimator rloo (leave-one-out baseline)
  reinforce_pp  advantage_estimator reinforce_pp (group mean out, batch whitening)
  dapo          loss dapo with clip-higher (epsilon_high 0.28)
  dapo_dynamic  dapo + dynamic sampling (at most 3 rounds a step)
  cispo         loss cispo (weight capped at 1 + 4.0)
  sapo          loss sapo (tau 1.0 / 1.05)
  label_free    the quickstart with majority_vote instead of exact_match: labels hidden
                from training, accuracy still measured against them
Every arm of a seed starts from the same warm-started tiny model (model.tiny.seed = seed)
and draws the same budget of samples: STEPS x 64 prompts x 8; an arm whose steps draw more
(dynamic sampling's extra rounds) takes fewer steps. Reported per arm and seed: held-out
greedy accuracy (256 problems) before and after, the training reward per sample drawn, the
steps taken and the samples drawn. No claim is made: this is a description of what each
option does on one small task.

    python evaluation/algorithms_synthetic.py --workers 2     # about 15 min on 2 cores (AVX2 EPYC)
    python evaluation/algorithms_synthetic.py --quick         # smoke test

Writes evaluation/results/algorithms_synthetic.json and .png.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import protocol as P

RECIPE = P.HERE.parent / "recipes" / "quickstart.yaml"
ARMS = {
    "grpo": ["algo.loss_type=grpo"],
    "rloo": ["algo.advantage_estimator=rloo"],
    "reinforce_pp": ["algo.advantage_estimator=reinforce_pp"],
    "dapo": ["algo.epsilon_high=0.28"],
    "dapo_dynamic": ["algo.epsilon_high=0.28", "algo.dynamic_sampling=true", "algo.dynamic_sampling_max_rounds=3"],
    "cispo": ["algo.loss_type=cispo", "algo.epsilon_high=4.0"],
    "sapo": ["algo.loss_type=sapo"],
    "label_free": ["rewards=[{name: majority_vote}]", "eval.reward=exact_match"],
}
SEEDS = [0, 1, 2]
STEPS = 60
COMMON = ["eval.num_problems=256", "eval.every_steps=0", "train.save_steps=0", "train.plot=false",
          "train.overwrite_output_dir=true"]


def config(arm: str, seed: int, work: Path, steps: int):
    from rlreason.config import load_config

    return load_config(RECIPE, [*COMMON, *ARMS[arm], f"train.seed={seed}", f"model.tiny.seed={seed}",
                                f"train.max_steps={steps}", f"train.output_dir={work / f'{arm}-seed{seed}'}"])


def warm_start(seed: int, work: Path) -> None:
    from rlreason.tiny import resolve_model_path

    cfg = config("grpo", seed, work, 1)
    resolve_model_path(cfg.model, cfg.data.synthetic, log=P.log_to_stderr(f"warm start seed {seed}"))


def run_arm(arm: str, seed: int, work: Path, steps: int) -> dict:
    """Steps until the arm has drawn the budget of samples; held-out accuracy before and after."""
    from rlreason.trainer import build_run, evaluate, rl_step

    cfg = config(arm, seed, work, steps)
    run = build_run(cfg, log=P.log_to_stderr(f"{arm} seed {seed}"))
    per_step = cfg.train.prompts_per_step * cfg.algo.num_generations
    budget, drawn, curve = steps * per_step, 0, []
    before = evaluate(run)["eval/accuracy"]
    clock = P.Clock()
    while drawn < budget:
        m = rl_step(run)
        run.step += 1
        drawn += int(m.get("dynamic/groups_sampled", cfg.train.prompts_per_step)) * cfg.algo.num_generations
        curve.append({"samples": drawn, "reward": m["reward"], **{k: m[k] for k in m if k.startswith("dynamic/")}})
    after = evaluate(run)
    out = {"arm": arm, "seed": seed, "steps": run.step, "samples_drawn": drawn, "train_time_s": clock.total(),
           "eval_accuracy_before": before, "eval_accuracy_after": after["eval/accuracy"],
           "train_reward_first10": statistics.fmean(c["reward"] for c in curve[:10]),
           "train_reward_last10": statistics.fmean(c["reward"] for c in curve[-10:]),
           "curve": curve}
    print(f"[{arm} seed {seed}] accuracy {before:.3f} -> {out['eval_accuracy_after']:.3f}, "
          f"{run.step} steps, {drawn} samples ({out['train_time_s']:.0f} s)", file=sys.stderr, flush=True)
    return out


def plot(runs: list[dict], path: Path) -> None:
    fig, (ax, bx) = P.figure(2, figsize=(12, 4.5))
    for arm in ARMS:
        rs = [r for r in runs if r["arm"] == arm]
        n = min(len(r["curve"]) for r in rs)
        xs = [rs[0]["curve"][i]["samples"] for i in range(n)]
        ys = [statistics.fmean(r["curve"][i]["reward"] for r in rs) for i in range(n)]
        w = max(1, n // 12)
        ax.plot(xs, [statistics.fmean(ys[max(0, i - w + 1): i + 1]) for i in range(n)], label=arm)
    ax.set_xlabel("samples drawn")
    ax.set_ylabel("training reward (mean of seeds, moving mean)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    arms = list(ARMS)
    for j, arm in enumerate(arms):
        accs = [r["eval_accuracy_after"] for r in runs if r["arm"] == arm]
        bx.scatter([j] * len(accs), accs, color="C0", alpha=0.7)
        bx.hlines(statistics.fmean(accs), j - 0.3, j + 0.3, color="C1")
    bx.hlines(statistics.fmean(r["eval_accuracy_before"] for r in runs), -0.5, len(arms) - 0.5, color="gray",
              linestyles="dashed", label="before training")
    bx.set_xticks(range(len(arms)), arms, rotation=30, fontsize=8)
    bx.set_ylabel("held-out greedy accuracy after (dots: seeds, bar: mean)")
    bx.legend(fontsize=8)
    bx.grid(alpha=0.3)
    P.save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    P.runner_args(ap, "algorithms_synthetic", quick_help="smoke test: 1 seed, 4 steps")
    args = ap.parse_args()
    seeds, steps = (SEEDS[:1], 4) if args.quick else (SEEDS, STEPS)
    work = Path(args.work)
    clock = P.Clock()
    for s in seeds:
        warm_start(s, work)  # once per seed here, shared by the seed's arms
    runs = P.pmap(run_arm, [(arm, s, work, steps) for s in seeds for arm in ARMS], args.workers)
    summary = {arm: {k: statistics.fmean(r[k] for r in runs if r["arm"] == arm)
                     for k in ("eval_accuracy_before", "eval_accuracy_after", "samples_drawn", "steps",
                               "train_reward_last10")} for arm in ARMS}
    out = Path(args.out)
    P.write_results(out, {
        "protocol": {"recipe": "recipes/quickstart.yaml", "arms": ARMS, "seeds": seeds,
                     "sample_budget": steps * 64 * 8, "steps_without_extra_draws": steps,
                     "eval": "256 held-out problems, greedy, exact match", "quick": args.quick,
                     "workers": args.workers, "wall_time_s": clock.total(), "cpu": P.cpu(),
                     "note": "one task, 3 seeds: a description, not a ranking; no claim is tested"},
        "summary": summary, "runs": runs})
    plot(runs, out.with_suffix(".png"))
    for arm, v in summary.items():
        print(f"{arm:14s} accuracy {v['eval_accuracy_before']:.3f} -> {v['eval_accuracy_after']:.3f}  "
              f"steps {v['steps']:.0f}  samples {v['samples_drawn']:.0f}")


if __name__ == "__main__":
    main()
