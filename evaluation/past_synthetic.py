"""PaST in miniature, under the protocol of evaluation/README.md: does a skill vector from
source-domain RL, added after target SFT, beat target SFT alone and sequential fine-tuning?

Source and target share a skill, carrying from column to column with digits written
least-significant first, but differ in what is done: the source adds two 2-digit numbers
("47+85="), the target three ("47+85+12=", a column can carry 2). Per seed s:
  theta_sft  the tiny model warm-started on the source (450 supervised steps, its own seed);
  theta_rl   GRPO on the source from theta_sft (quickstart recipe, 150 steps x 64 x 8);
  v          theta_rl - theta_sft (`rlreason skill extract`).
Arms, every SFT stage 50 steps x 64 target examples:
  past        theta_tgt + lambda v, theta_tgt = target SFT from theta_sft (`skill apply`)
  target_sft  theta_tgt alone (the paper's baseline; less compute, by the RL stage)
  sequential  target SFT from theta_rl (the same extra compute as past)
target_sft's and sequential's learning rates and past's lambda are tuned on a target
validation set with the tuning seeds; the target test set is scored once, on seeds 0-7.

    python evaluation/past_synthetic.py             # the protocol (see README for time)
    python evaluation/past_synthetic.py --cut 3     # with the pre-declared cuts 1-3
    python evaluation/past_synthetic.py --quick     # smoke test: not the protocol

Writes evaluation/results/past_synthetic.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import protocol as P

RECIPE = P.HERE.parent / "recipes" / "quickstart.yaml"
SOURCE = ["model.tiny.warmstart_target_accuracy=null", "model.tiny.warmstart_steps=450",
          "train.overwrite_output_dir=true", "eval.num_problems=0", "train.plot=false"]
RL_PROMPTS, RL_GENERATIONS = 64, 8  # the quickstart recipe's
TARGET = ["train.overwrite_output_dir=true", "data.synthetic.task=addition3",
          "data.synthetic.difficulty=2", "data.synthetic.num_train=2000", "data.synthetic.num_eval=0",
          "rewards=[{name: exact_match}]", "train.prompts_per_step=64", "train.micro_batch_size=64",
          "train.warmup_steps=5", "train.plot=false", "eval.num_problems=0"]
EXAMPLES = 64
LR_GRID = [3e-4, 1e-3, 3e-3]
LAMBDA_GRID = [0.25, 0.5, 1.0]
STEPS = {"rl": 150, "sft": 50}
FLOORS = {"rl": 100, "sft": 50}
N_VAL, N_TEST = 128, 256


def eval_sets():
    """Target (validation, test), disjoint from the target training pool and each other."""
    from rlreason.config import load_config
    from rlreason.data.synthetic import synthetic_problems, synthetic_splits

    train, _ = synthetic_splits(load_config(None, TARGET).data.synthetic)
    seen = {p.prompt for p in train}
    val = synthetic_problems("addition3", N_VAL, 2, seed=0, split="val-past", exclude=seen)
    test = synthetic_problems("addition3", N_TEST, 2, seed=0, split="test-past",
                              exclude=seen | {p.prompt for p in val})
    return val, test


def source_stage(seed: int, rl_steps: int, work: Path) -> dict:
    """theta_sft, theta_rl and v for one seed."""
    from rlreason import skills
    from rlreason.config import load_config
    from rlreason.tiny import resolve_model_path
    from rlreason.trainer import train

    log = P.log_to_stderr(f"source seed {seed}")
    seeded = [*SOURCE, f"model.tiny.seed={seed}", f"train.seed={seed}"]
    cfg = load_config(RECIPE, seeded)
    theta_sft = Path(resolve_model_path(cfg.model, cfg.data.synthetic, log=log))
    rl_dir = work / f"rl-seed{seed}"
    train(load_config(RECIPE, [*seeded, f"train.output_dir={rl_dir}", f"train.max_steps={rl_steps}"]),
          log=log)
    v = work / f"v-seed{seed}"
    skills.extract(theta_sft, rl_dir / "final", v, source_recipe=str(RECIPE))
    return {"theta_sft": theta_sft, "theta_rl": rl_dir / "final", "v": v,
            "compute": P.rl_compute(rl_dir, RL_PROMPTS, RL_GENERATIONS)}


def target_sft(start: Path, lr: float, seed: int, steps: int, out: Path) -> dict:
    from rlreason.config import load_config
    from rlreason.sft import train_sft

    train_sft(load_config(None, [*TARGET, f"model.name_or_path={start}", f"train.learning_rate={lr}",
                                 f"train.max_steps={steps}", f"train.seed={seed}",
                                 f"train.output_dir={out}"]),
              log=P.log_to_stderr(f"target sft {out.name}"))
    return {"model": out / "final", "compute": P.sft_compute(out, EXAMPLES)}


def past_model(tgt: Path, v: Path, lam: float, out: Path) -> Path:
    from rlreason import skills

    return Path(skills.apply(tgt, v, out, scale=lam))


def score(model: Path, problems, seed: int, tag: str) -> dict:
    r = P.evaluate(model, problems, seed)
    print(f"  [{tag}] greedy {r['greedy']:.3f} pass@1 {r['pass@1']:.3f} pass@8 {r['pass@8']:.3f}",
          file=sys.stderr, flush=True)
    return r


def tune_sft(arm: str, start: Path, i: int, lr: float, s: int, sft_steps: int, work: Path, val) -> dict:
    """One tuning run of target_sft or sequential, scored on validation (a protocol.pmap job)."""
    t = target_sft(start, lr, s, sft_steps, work / "tune" / f"{arm}-lr{lr:g}-seed{s}")
    return {**t, "val": score(t["model"], val, s, f"tune {arm} lr {lr:g} seed {s}")}


def seed_runs(s: int, steps: dict, picks: dict, work: Path, test):
    """Every arm of one test seed: (scores by arm, compute by arm, cosine(v, SFT update))."""
    from rlreason import skills

    src = source_stage(s, steps["rl"], work / "test")
    tgt = target_sft(src["theta_sft"], picks["target_sft"]["target_sft_lr"], s, steps["sft"],
                     work / "test" / f"target_sft-seed{s}")
    seq = target_sft(src["theta_rl"], picks["sequential"]["target_sft_lr"], s, steps["sft"],
                     work / "test" / f"sequential-seed{s}")
    past = past_model(tgt["model"], src["v"], picks["past"]["lambda"], work / "test" / f"past-seed{s}")
    skills.extract(src["theta_sft"], tgt["model"], work / "test" / f"sft-update-seed{s}")
    cosine = skills.inspect(src["v"], work / "test" / f"sft-update-seed{s}")["cosine"]
    res = {"past": score(past, test, s, f"test past seed {s}"),
           "target_sft": score(tgt["model"], test, s, f"test target_sft seed {s}"),
           "sequential": score(seq["model"], test, s, f"test sequential seed {s}"),
           "source_sft_only": score(src["theta_sft"], test, s, f"test theta_sft seed {s}")}
    rl = {f"rl_{k}": v for k, v in src["compute"].items()}
    comp = {"target_sft": {f"sft_{k}": v for k, v in tgt["compute"].items()},
            "past": {**rl, **{f"sft_{k}": v for k, v in tgt["compute"].items()}},
            "sequential": {**rl, **{f"sft_{k}": v for k, v in seq["compute"].items()}}}
    return res, comp, cosine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cut", type=int, default=0, choices=[0, 1, 2, 3])
    ap.add_argument("--step-factor", type=float, default=1.0, help="cut 3's factor (RL stage)")
    P.runner_args(ap, "past_synthetic")
    args = ap.parse_args()
    clock = P.Clock()
    tuning_seeds, grids, steps = P.apply_cuts(args.cut, P.TUNING_SEEDS,
                                              {"lr": LR_GRID, "lambda": LAMBDA_GRID}, STEPS,
                                              args.step_factor, FLOORS)
    test_seeds = list(P.TEST_SEEDS)
    if args.quick:
        tuning_seeds, test_seeds, steps = tuning_seeds[:1], [0], {"rl": 30, "sft": 20}
    work = Path(args.work)
    val, test = eval_sets()
    lrs, lams = grids["lr"], grids["lambda"]

    # ---- tuning: target_sft's and sequential's lr, then past's lambda at target_sft's lr
    tuning = {"target_sft": {}, "sequential": {}, "past": {}}
    sources = {}
    for s, src in zip(tuning_seeds, P.pmap(source_stage, [(s, steps["rl"], work / "tune")
                                                         for s in tuning_seeds], args.workers)):
        sources[s] = src
    jobs = [(arm, sources[s]["theta_sft" if arm == "target_sft" else "theta_rl"], i, lr, s,
             steps["sft"], work, val) for s in tuning_seeds for i, lr in enumerate(lrs)
            for arm in ("target_sft", "sequential")]
    for (arm, _, i, _, s, *_), t in zip(jobs, P.pmap(tune_sft, jobs, args.workers)):
        tuning[arm][(i, s)] = t
    picks, validation = {}, {}
    for arm in ("target_sft", "sequential"):
        scores = {i: [tuning[arm][(i, s)]["val"]["greedy"] for s in tuning_seeds] for i in range(len(lrs))}
        best, means = P.pick(lrs, scores)
        picks[arm] = {"target_sft_lr": lrs[best]}
        validation[arm] = [{"target_sft_lr": lr, "val_greedy_by_seed": scores[i], "val_greedy_mean": means[i]}
                           for i, lr in enumerate(lrs)]
    lr_t = lrs.index(picks["target_sft"]["target_sft_lr"])
    for j, lam in enumerate(lams):
        for s in tuning_seeds:
            m = past_model(tuning["target_sft"][(lr_t, s)]["model"], sources[s]["v"], lam,
                           work / "tune" / f"past-lambda{lam:g}-seed{s}")
            tuning["past"][(j, s)] = {"val": score(m, val, s, f"tune past lambda {lam:g} seed {s}")}
    scores = {j: [tuning["past"][(j, s)]["val"]["greedy"] for s in tuning_seeds] for j in range(len(lams))}
    best, means = P.pick(lams, scores)
    picks["past"] = {"lambda": lams[best], "target_sft_lr": picks["target_sft"]["target_sft_lr"]}
    validation["past"] = [{"lambda": lam, "val_greedy_by_seed": scores[j], "val_greedy_mean": means[j]}
                          for j, lam in enumerate(lams)]
    clock.lap("tuning")
    print(f"picks {picks}", file=sys.stderr, flush=True)

    # ---- test: seeds 0-7, scored once

    results: dict = {}
    runs_out, compute = [], {"past": [], "target_sft": [], "sequential": []}
    for s, (res, comp, cosine) in zip(test_seeds, P.pmap(
            seed_runs, [(s, steps, picks, work, test) for s in test_seeds], args.workers)):
        results[s] = res
        for arm, c in comp.items():
            compute[arm].append(c)
        runs_out.append({"seed": s, "cosine_v_vs_target_sft_update": cosine, **res})
    clock.lap("test")

    metric = "target test greedy accuracy"
    claims = [P.claim("PaST beats target SFT alone", metric, "past", "target_sft", results,
                      lambda r: r["greedy"]),
              P.claim("PaST beats sequential fine-tuning at the same compute", metric, "past",
                      "sequential", results, lambda r: r["greedy"])]
    protocol = {
        "written": "evaluation/README.md (PaST section), fixed before these runs",
        "task": {"source": "addition, 2 digits, two operands", "target": "addition3, 2 digits",
                 "theta_sft": "450 supervised steps on the source, per seed",
                 "n_target_train": 2000, "n_val": N_VAL, "n_test": N_TEST},
        "cut_level": args.cut, "step_factor": args.step_factor if args.cut >= 3 else 1.0,
        "quick": args.quick, "workers": args.workers, "seeds": test_seeds, "tuning_seeds": tuning_seeds,
        "steps": {"rl": steps["rl"], "sft": steps["sft"]},
        "per_arm": {arm: P.sum_compute(c) for arm, c in compute.items()},
        "compute_note": "target_sft has no RL stage: it has less compute than past and sequential "
                        "by the per_arm rl_* counts",
        "picked_hyperparameters": picks, "validation_scores": validation,
        "grids": {"lr": lrs, "lambda": lams},
        "eval": f"{P.EVAL_SAMPLES} samples at temperature 1 + 1 greedy, max_tokens {P.MAX_TOKENS}",
        "wall_time_s": {**clock.laps, "total": clock.total()}, "cpu": P.cpu(),
        "source_overrides": SOURCE, "target_overrides": TARGET,
    }
    P.write_results(Path(args.out), {
        "claims": claims, "protocol": protocol,
        "summary": {**P.summary(results, ["greedy", "pass@1", "pass@8"]),
                    "cosine_v_vs_target_sft_update": [r["cosine_v_vs_target_sft_update"] for r in runs_out]},
        "runs": runs_out})
    P.print_claims(claims)


if __name__ == "__main__":
    main()
