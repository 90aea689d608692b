"""Asynchronous rollouts on CPU: trainer and rollout server as two processes, one core each.

The quickstart recipe (tiny model, 2-digit addition) with `rollout.backend: server`; the
server (`rlreason serve --backend hf`) is pinned to core 1 with one torch thread, this
process (the trainer) to core 0 with one thread. For each `rollout.async_steps` in 0, 1, 2
and each seed: STEPS optimizer steps, then held-out greedy accuracy (256 problems) through
the same server. Reported per run: median step time, median time the trainer waited for
its batch (`async/wait_s`), median time the generator sat idle (`async/gen_wait_s`),
staleness, and accuracy before and after; per setting the medians and means over seeds.

    python benchmarks/async_rollouts.py                   # ~10 min on 2 cores
    python benchmarks/async_rollouts.py --steps 4 --seeds 0 --out /tmp/a.json   # smoke test

Writes benchmarks/results/async_rollouts.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart.yaml"


def server_on_core(model_dir: str, core: int):
    """`rlreason serve` (transformers engine, one thread) pinned to `core`; yields its URL."""
    from rlreason.rollout.server import spawned  # lazily: like every rlreason import here (HF_HUB_OFFLINE first)

    return spawned(model_dir, "--dtype", "float32", backend="hf", cpus={core}, timeout_s=150,
                   env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})


def one_run(url: str, async_steps: int, seed: int, steps: int, work: Path) -> dict:
    from rlreason.config import load_config
    from rlreason.trainer import build_run, evaluate, rl_step

    cfg = load_config(RECIPE, [
        "rollout.backend=server", f"rollout.server_url={url}", f"rollout.async_steps={async_steps}",
        f"train.seed={seed}", f"train.max_steps={steps}", "train.threads=1", "train.save_steps=0",
        "train.plot=false", "eval.every_steps=0", f"train.output_dir={work / f'async{async_steps}-seed{seed}'}",
        "train.overwrite_output_dir=true"])
    run = build_run(cfg, log=lambda s: None)
    before = evaluate(run)["eval/accuracy"]
    rows = []
    t0 = time.perf_counter()
    for _ in range(steps):
        m = rl_step(run)
        run.step += 1
        rows.append(m)
    train_s = time.perf_counter() - t0
    if run.rollouts is not None:
        run.rollouts.close()
    after = evaluate(run)["eval/accuracy"]
    med = lambda k: statistics.median(r[k] for r in rows[2:]) if k in rows[0] else None  # noqa: E731
    out = {"async_steps": async_steps, "seed": seed, "steps": steps, "train_time_s": train_s,
           "median_step_s": med("step_time_s"), "median_wait_s": med("async/wait_s"),
           "median_gen_wait_s": med("async/gen_wait_s"),
           "staleness_mean": statistics.fmean(r["async/staleness_mean"] for r in rows) if async_steps else 0.0,
           "staleness_max": max(r["async/staleness_max"] for r in rows) if async_steps else 0,
           "eval_accuracy_before": before, "eval_accuracy_after": after,
           "reward_last10": statistics.fmean(r["reward"] for r in rows[-10:])}
    print(f"[async {async_steps} seed {seed}] {out['median_step_s']:.3f} s/step, accuracy {before:.3f} -> "
          f"{after:.3f}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--async-steps", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", default="runs/async_rollouts")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "async_rollouts.json"))
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs 2 cores: one for the trainer, one for the server")
    from rlreason.config import load_config
    from rlreason.tiny import resolve_model_path

    cfg = load_config(RECIPE, [])
    model = resolve_model_path(cfg.model, cfg.data.synthetic, log=lambda s: print(s, file=sys.stderr))
    os.sched_setaffinity(0, {0})  # the trainer: core 0 (train.threads=1)
    runs = []
    started = time.perf_counter()
    with server_on_core(model, core=1) as url:
        for seed in args.seeds:  # interleaved, so slow drift of the machine hits every setting alike
            for a in args.async_steps:
                runs.append(one_run(url, a, seed, args.steps, Path(args.work)))
    summary = {}
    for a in args.async_steps:
        rs = [r for r in runs if r["async_steps"] == a]
        summary[str(a)] = {
            "median_step_s": statistics.median(r["median_step_s"] for r in rs),
            "median_wait_s": None if a == 0 else statistics.median(r["median_wait_s"] for r in rs),
            "staleness_max": max(r["staleness_max"] for r in rs),
            "eval_accuracy_before_mean": statistics.fmean(r["eval_accuracy_before"] for r in rs),
            "eval_accuracy_after_mean": statistics.fmean(r["eval_accuracy_after"] for r in rs),
            "eval_accuracy_after_per_seed": [r["eval_accuracy_after"] for r in rs]}
    base = summary[str(args.async_steps[0])]["median_step_s"]
    for v in summary.values():
        v["speedup_vs_first"] = base / v["median_step_s"]
    result = {"settings": {"recipe": "recipes/quickstart.yaml", "backend": "server (hf engine), one core",
                           "trainer": "one core, train.threads=1", "steps": args.steps, "seeds": args.seeds,
                           "async_steps": args.async_steps, "eval": "256 held-out problems, greedy",
                           "median": "over steps[2:] of each run, then over seeds"},
              "summary": summary, "runs": runs, "wall_time_s": time.perf_counter() - started,
              "env": machine_info()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
