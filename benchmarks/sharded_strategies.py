"""The same recipe under every shipped accelerate config (DDP, FSDP2, ZeRO-2, ZeRO-3), on
the GPUs of this machine: does each strategy run, log its name, raise the reward, save a
checkpoint and resume from it? Writes one JSON summary.

Each strategy runs `accelerate launch --config_file configs/accelerate/<name>.yaml
--num_processes <gpus> -m rlreason train RECIPE ...` twice: STEPS steps with a checkpoint
at STEPS/2 and a stop there (`train.max_steps=STEPS/2`), then `train.resume_from=latest`
up to STEPS. Default recipe: the quickstart (tiny model, built locally) with LoRA off, and
again with LoRA on for ZeRO-3 (the adapter is gathered from shards for every push).

usage (GPU machine):  python benchmarks/sharded_strategies.py --gpus 1 --steps 40
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402


def launch(config: str, gpus: int, recipe: str, overrides: list[str], log: Path) -> float:
    cmd = ["accelerate", "launch", "--config_file", str(ROOT / "configs" / "accelerate" / f"{config}.yaml"),
           "--num_processes", str(gpus), "--num_machines", "1", "--machine_rank", "0",
           "-m", "rlreason", "train", recipe, *overrides]
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        res = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if res.returncode:
        raise RuntimeError(f"{config}: exit {res.returncode}; see {log}")
    return time.perf_counter() - t0


def summarise(out: Path) -> dict:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward" in r]
    evals = [r for r in rows if "eval/accuracy" in r]
    k = max(1, len(steps) // 4)
    return {
        "strategy": steps[0].get("strategy"), "world_size": steps[0].get("world_size"),
        "steps": [r["step"] for r in steps][-1],
        "reward_first_quarter": sum(r["reward"] for r in steps[:k]) / k,
        "reward_last_quarter": sum(r["reward"] for r in steps[-k:]) / k,
        "eval_accuracy": [(r["step"], r["eval/accuracy"]) for r in evals],
        "median_step_time_s": sorted(r["step_time_s"] for r in steps)[len(steps) // 2],
        "median_generation_time_s": sorted(r["generation_time_s"] for r in steps)[len(steps) // 2],
        "final_model": sorted(p.name for p in (out / "final").iterdir()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--recipe", default="recipes/quickstart.yaml")
    ap.add_argument("--configs", default="ddp,fsdp2,zero2,zero3,zero3-lora")
    ap.add_argument("--work", default="/tmp/rlreason-sharded")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sharded_strategies_gpu.json"))
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    half = args.steps // 2
    results = {"machine": machine_info(), "gpus": args.gpus, "recipe": args.recipe, "steps": args.steps,
               "runs": {}}
    for name in args.configs.split(","):
        config, lora = name.removesuffix("-lora"), name.endswith("-lora")
        out = work / name
        common = [f"train.output_dir={out}", f"train.save_steps={half}", "train.plot=false",
                  f"eval.every_steps={half}", "eval.num_problems=128"]
        if lora:
            common += ["model.lora.enabled=true", "model.lora.r=16", "train.learning_rate=2e-4"]
        log = work / f"{name}.log"
        try:
            t1 = launch(config, args.gpus, args.recipe, common + [f"train.max_steps={half}"], log)
            t2 = launch(config, args.gpus, args.recipe,
                        common + [f"train.max_steps={args.steps}", "train.resume_from=latest"], log)
            results["runs"][name] = {"ok": True, "wall_s": [round(t1, 1), round(t2, 1)], **summarise(out)}
        except Exception as e:  # record and go on: one broken strategy must not hide the others
            tail = log.read_text()[-2500:] if log.exists() else ""
            results["runs"][name] = {"ok": False, "error": str(e), "log_tail": tail}
        print(json.dumps({name: results["runs"][name]}, indent=1), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # after each: a killed run keeps the rest
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
