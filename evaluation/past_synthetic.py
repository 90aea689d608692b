"""PaST in miniature: does a skill vector from source-domain RL help after target SFT?

Two formats of one task: the source domain writes additions as "47+85=", the target domain
as "47&85=" (the answer, digits least-significant first, is the same). Per seed:
  1. theta_sft: the quickstart's tiny model, warm-started (SFT) on the source format;
  2. theta_rl: GRPO on the source format from theta_sft (the quickstart recipe, 150 steps);
     skill vector v = theta_rl - theta_sft (`rlreason skill extract`);
  3. theta_tgt: light SFT of theta_sft on the target format (`rlreason sft`, 20 steps);
  4. theta_past = theta_tgt + v (`rlreason skill apply`, scale 1; and 0.5 for comparison).
theta_tgt and theta_past are evaluated on 256 held-out target-format problems: greedy
accuracy and pass@1 / pass@8 of 8 samples at temperature 1. Also recorded: the cosine
between v and the target-SFT update theta_tgt - theta_sft (the paper's observation is that
SFT and RL updates are nearly orthogonal).

    python evaluation/past_synthetic.py          # ~5 min on 2 cores
    python evaluation/past_synthetic.py --quick  # 1 seed

Writes evaluation/results/past_synthetic.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

RECIPE = HERE.parent / "recipes" / "quickstart.yaml"
# the protocol as it ran: the quickstart's warm-start at a fixed 450 steps (the recipe now
# stops it at a target accuracy), and reruns replace the previous run's folders
PROTOCOL = ["model.tiny.warmstart_target_accuracy=null", "model.tiny.warmstart_steps=450",
            "train.overwrite_output_dir=true"]


def held_out(n: int = 256):
    from rlreason.data.synthetic import synthetic_problems

    return synthetic_problems("addition", n, 2, seed=4242, split="past-heldout", operator="&")


def run_seed(seed: int, rl_steps: int, sft_steps: int, work: Path) -> dict:
    from pope_synthetic import evaluate

    from rlreason import skills
    from rlreason.config import load_config
    from rlreason.models import resolve_model_path
    from rlreason.sft import train_sft
    from rlreason.trainer import train

    quiet = lambda s: print(f"  [seed {seed}] {s}", file=sys.stderr)  # noqa: E731
    base_cfg = load_config(RECIPE, PROTOCOL)
    theta_sft = Path(resolve_model_path(base_cfg.model, base_cfg.data.synthetic, log=quiet))
    rl_dir, tgt_dir = work / f"rl-seed{seed}", work / f"target-sft-seed{seed}"
    train(load_config(RECIPE, [*PROTOCOL, f"train.output_dir={rl_dir}", f"train.max_steps={rl_steps}",
                               f"train.seed={seed}", "eval.num_problems=0", "train.plot=false"]),
          log=quiet)
    skills.extract(theta_sft, rl_dir / "final", work / f"v-seed{seed}", source_recipe=str(RECIPE))
    train_sft(load_config(None, [
        "train.overwrite_output_dir=true", f"model.name_or_path={theta_sft}", "data.synthetic.operator=&",
        "data.synthetic.difficulty=2", "data.synthetic.num_train=2000", "data.synthetic.num_eval=0",
        "rewards=[{name: exact_match}]", "train.prompts_per_step=64", "train.micro_batch_size=64",
        f"train.max_steps={sft_steps}", "train.learning_rate=1e-3", f"train.seed={seed}",
        f"train.output_dir={tgt_dir}", "train.plot=false", "eval.num_problems=0",
    ]), log=quiet)
    # the target SFT update, as a vector, to measure its angle to the RL skill
    skills.extract(theta_sft, tgt_dir / "final", work / f"sft-update-seed{seed}")
    cosine = skills.inspect(work / f"v-seed{seed}", work / f"sft-update-seed{seed}")["cosine"]
    past = skills.apply(tgt_dir / "final", work / f"v-seed{seed}", work / f"past-seed{seed}")
    half = skills.apply(tgt_dir / "final", work / f"v-seed{seed}", work / f"past-half-seed{seed}",
                        scale=0.5)
    problems = held_out()
    return {"seed": seed, "cosine_rl_vs_sft_update": cosine,
            "source_sft_only": evaluate(theta_sft, problems, seed),
            "target_sft": evaluate(tgt_dir / "final", problems, seed),
            "target_sft_plus_skill": evaluate(past, problems, seed),
            "target_sft_plus_half_skill": evaluate(half, problems, seed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rl-steps", type=int, default=150)
    ap.add_argument("--sft-steps", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", default="runs/past_synthetic")
    ap.add_argument("--out", default=str(HERE / "results" / "past_synthetic.json"))
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.rl_steps = [0], 60
    runs = [run_seed(s, args.rl_steps, args.sft_steps, Path(args.work)) for s in args.seeds]
    summary = {}
    for model in ("source_sft_only", "target_sft", "target_sft_plus_skill",
                  "target_sft_plus_half_skill"):
        summary[model] = {m: {"mean": statistics.fmean(r[model][m] for r in runs),
                              "per_seed": [r[model][m] for r in runs]}
                          for m in ("greedy", "pass@1", "pass@8")}
    summary["cosine_rl_vs_sft_update"] = [r["cosine_rl_vs_sft_update"] for r in runs]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setup": {"rl_steps": args.rl_steps, "sft_steps": args.sft_steps,
                                         "seeds": args.seeds, "held_out": "256 target-format problems"},
                               "summary": summary, "runs": runs}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
