"""Multiplication with and without a calculator tool, at the same number of episodes.

Arms (recipes/tools_synthetic.yaml and one change):
  tool      the recipe: the `tools` environment with a calculator (tag format); warm start on
            calculator transcripts "<calculator>a*b</calculator><result>c</result>#### c"
  no_tool   env.name null, warm start on "#### c": the model must multiply by itself
Each arm and seed s: its own tiny model (model.tiny.seed = s, warm-started to the recipe's
target: half the sampled first turns right; amendment 1 in evaluation/README.md), 40
GRPO steps x 32 prompts x 8 samples, held-out greedy accuracy (128 problems) before and
after. The protocol is in evaluation/README.md ("Tools"), written before the run.

    python evaluation/tools_synthetic.py --workers 2     # about 15 min on 2 cores (AVX2 EPYC)
    python evaluation/tools_synthetic.py --quick         # smoke test

Writes evaluation/results/tools_synthetic.json and .png.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import protocol as P

RECIPE = P.HERE.parent / "recipes" / "tools_synthetic.yaml"
ARMS = {
    "tool": [],
    "no_tool": ["env.name=null", "data.synthetic.tool_calls=false"],
}
SEEDS = [0, 1, 2]
STEPS = 40
COMMON = ["eval.every_steps=0", "train.save_steps=0", "train.plot=false", "train.overwrite_output_dir=true"]
EPISODE_KEYS = ("env/turns", "env/tool_calls", "env/tool_errors", "env/truncated")


def config(arm: str, seed: int, work: Path, steps: int):
    from rlreason.config import load_config

    return load_config(RECIPE, [*COMMON, *ARMS[arm], f"train.seed={seed}", f"model.tiny.seed={seed}",
                                f"train.max_steps={steps}", f"train.output_dir={work / f'{arm}-seed{seed}'}"])


def run_arm(arm: str, seed: int, work: Path, steps: int) -> dict:
    from rlreason.trainer import build_run, evaluate, rl_step

    clock = P.Clock()
    cfg = config(arm, seed, work, steps)
    run = build_run(cfg, log=P.log_to_stderr(f"{arm} seed {seed}"))
    warm_s = clock.total()
    before = evaluate(run)
    curve = []
    for _ in range(steps):
        m = rl_step(run)
        run.step += 1
        curve.append({"step": run.step, "reward": m["reward"], "completion_length": m["completion_length"],
                      **{k: m[k] for k in EPISODE_KEYS if k in m}})
    after = evaluate(run)
    last = curve[-5:]
    out = {"arm": arm, "seed": seed, "steps": run.step, "episodes": steps * cfg.train.prompts_per_step
           * cfg.algo.num_generations, "wall_time_s": clock.total(), "build_and_warm_start_s": warm_s,
           "eval_accuracy_before": before["eval/accuracy"], "eval_accuracy_after": after["eval/accuracy"],
           "train_reward_first5": statistics.fmean(c["reward"] for c in curve[:5]),
           "train_reward_last5": statistics.fmean(c["reward"] for c in last),
           "completion_tokens_last5": statistics.fmean(c["completion_length"] for c in last),
           **{f"{k}_last5": statistics.fmean(c[k] for c in last) for k in EPISODE_KEYS if k in curve[0]},
           "curve": curve}
    print(f"[{arm} seed {seed}] accuracy {out['eval_accuracy_before']:.3f} -> {out['eval_accuracy_after']:.3f} "
          f"({out['wall_time_s']:.0f} s)", file=sys.stderr, flush=True)
    return out


def plot(runs: list[dict], path: Path) -> None:
    fig, (ax, bx) = P.figure(2, figsize=(11, 4.2))
    for j, arm in enumerate(ARMS):
        for r in (r for r in runs if r["arm"] == arm):
            ax.plot([c["step"] for c in r["curve"]], [c["reward"] for c in r["curve"]], color=f"C{j}", alpha=0.6,
                    label=arm if r["seed"] == runs[0]["seed"] else None)
            bx.plot([0, 1], [r["eval_accuracy_before"], r["eval_accuracy_after"]], "o-", color=f"C{j}", alpha=0.7,
                    label=arm if r["seed"] == runs[0]["seed"] else None)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("training reward (each line a seed)")
    ax.legend()
    ax.grid(alpha=0.3)
    bx.set_xticks([0, 1], ["before GRPO", "after"])
    bx.set_ylabel("held-out greedy accuracy (each line a seed)")
    bx.legend()
    bx.grid(alpha=0.3)
    P.save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    P.runner_args(ap, "tools_synthetic", quick_help="smoke test: 1 seed, 3 steps")
    args = ap.parse_args()
    seeds, steps = (SEEDS[:1], 3) if args.quick else (SEEDS, STEPS)
    work = Path(args.work)
    clock = P.Clock()
    runs = P.pmap(run_arm, [(arm, s, work, steps) for s in seeds for arm in ARMS], args.workers)
    by = {(r["arm"], r["seed"]): r for r in runs}
    verdict = all(by["tool", s]["eval_accuracy_after"] > max(by["tool", s]["eval_accuracy_before"],
                                                              by["no_tool", s]["eval_accuracy_after"]) for s in seeds)
    summary = {arm: {k: statistics.fmean(r[k] for r in runs if r["arm"] == arm)
                     for k in runs[0] if k.endswith(("_before", "_after", "_last5", "_first5", "wall_time_s"))
                     and all(k in r for r in runs if r["arm"] == arm)} for arm in ARMS}
    out = Path(args.out)
    P.write_results(out, {
        "protocol": {"recipe": "recipes/tools_synthetic.yaml", "arms": ARMS, "seeds": seeds, "steps": steps,
                     "episodes_per_run": steps * 32 * 8, "eval": "128 held-out problems, greedy, exact match "
                     "on the answer after ####", "quick": args.quick, "workers": args.workers,
                     "wall_time_s": clock.total(), "cpu": P.cpu(),
                     "claim": "in every seed the tool arm's accuracy after GRPO is above its accuracy before "
                              "and above the no-tool arm's after"},
        "claim_holds": verdict, "summary": summary, "runs": runs})
    plot(runs, out.with_suffix(".png"))
    for arm, v in summary.items():
        print(f"{arm:8s} accuracy {v['eval_accuracy_before']:.3f} -> {v['eval_accuracy_after']:.3f}")
    print(f"claim holds in every seed: {verdict}")


if __name__ == "__main__":
    main()
