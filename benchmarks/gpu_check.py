"""The checks to run first on a lent GPU, in one go, under ten minutes; one JSON at the end.

Each check runs in its own subprocess with its own time limit and is recorded as `ok`,
`failed` (exit code and the log's tail), `timed_out` or `skipped` (with what is missing and
the command that adds it), so a machine without network or without a package still yields
every answer it can instead of stopping half-way. The JSON is rewritten after every check:
a killed run keeps what it had.

  1. environment: torch/CUDA, GPU name and memory, and which of vllm, deepspeed, peft,
     accelerate, flash_attn import (each import in a subprocess: a broken build cannot take
     the script down);
  2. quickstart with the vLLM backend colocated and sleep mode on (weights synced every step);
  3. the same with LoRA: the adapter pushed to vLLM each step without a merge;
  4. rollout tokens/s against plain vLLM and the full weight sync of a random-init 1.5B
     Qwen2-shaped model (benchmarks/rollout_throughput.py --preset 1.5b, no download);
  5. one optimizer step under each shipped accelerate config (DDP, FSDP2, ZeRO-2, ZeRO-3).

Beyond the ten-minute set, run only when named with --only (a second call):
  tools_vllm         recipes/tools_synthetic.yaml on colocated vLLM, 10 steps: multi-turn
                     episodes turn by turn with prefix caching;
  async_server_vllm  `rlreason serve --backend vllm` on the same GPU and the quickstart
                     through it with rollout.async_steps=1, 10 steps.

    bash benchmarks/gpu_check.sh                       # writes benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --only env,quickstart_vllm --out /tmp/g.json
    python benchmarks/gpu_check.py --only tools_vllm,async_server_vllm --out benchmarks/results/gpu_check_extra.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

PACKAGES = {"vllm": "pip install vllm", "deepspeed": "pip install deepspeed", "peft": "pip install peft",
            "accelerate": "pip install accelerate", "flash_attn": "pip install flash-attn (optional)"}
ACCELERATE_CONFIGS = ["ddp", "fsdp2", "zero2", "zero3"]
# seconds per check: together under 600 even when every one runs to its limit
LIMITS = {"env": 40, "quickstart_vllm": 120, "lora_push_vllm": 100, "rollout_1.5b": 160,
          "accelerate": 45}
# opt-in checks (--only names them): the set above keeps to ten minutes without them
EXTRA_LIMITS = {"tools_vllm": 180, "async_server_vllm": 300}


def run(cmd: list[str], limit: float, log: Path, env: dict | None = None) -> dict:
    """Run `cmd` with a time limit; its output goes to `log`."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=limit,
                                env={**os.environ, **(env or {})}).returncode
        except subprocess.TimeoutExpired:
            rc = None
    out = {"wall_s": round(time.perf_counter() - t0, 1), "log": str(log)}
    if rc is None:
        return {"status": "timed_out", "limit_s": limit, **out, "log_tail": log.read_text()[-1500:]}
    if rc:
        return {"status": "failed", "exit_code": rc, **out, "log_tail": log.read_text()[-1500:]}
    return {"status": "ok", **out}


def imports(work: Path) -> dict:
    found = {}
    for mod, how in PACKAGES.items():
        code = f"import {mod}; print(getattr({mod}, '__version__', '?'))"
        try:
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=LIMITS["env"])
            found[mod] = ({"ok": True, "version": r.stdout.strip()} if r.returncode == 0 else
                          {"ok": False, "error": (r.stderr.strip().splitlines() or ["?"])[-1][:300], "fix": how})
        except subprocess.TimeoutExpired:
            found[mod] = {"ok": False, "error": f"import took over {LIMITS['env']} s", "fix": how}
    return found


def cuda() -> dict:
    try:
        import torch
    except ImportError:
        return {"torch": None, "cuda": False}
    info = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "cuda_version": torch.version.cuda}
    if info["cuda"]:
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, memory_gib=round(p.total_memory / 2**30, 1), count=torch.cuda.device_count())
    return info


def metrics(folder: Path) -> dict:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    steps = [r for r in rows if "reward" in r]
    if not steps:
        return {}
    times = sorted(r["step_time_s"] for r in steps)
    return {"steps": len(steps), "reward_first": steps[0]["reward"], "reward_last": steps[-1]["reward"],
            "median_step_time_s": times[len(times) // 2], "strategy": steps[-1].get("strategy"),
            "eval_accuracy": [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r],
            **{k: steps[-1][k] for k in ("env/tool_calls", "env/turns", "async/staleness_max", "async/wait_s")
               if k in steps[-1]}}


def quickstart(work: Path, name: str, extra: list[str]) -> dict:
    out = work / name
    cmd = [sys.executable, "-m", "rlreason", "train", "recipes/quickstart.yaml", "rollout.backend=vllm",
           "rollout.vllm_sleep_mode=true", "train.max_steps=10", "train.save_steps=0", "eval.every_steps=10",
           "eval.num_problems=64", "train.plot=false", f"train.output_dir={out}",
           "train.overwrite_output_dir=true", *extra]
    r = run(cmd, LIMITS[name], work / f"{name}.log", env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    return {**r, **metrics(out)}


def tools_vllm(work: Path) -> dict:
    out = work / "tools_vllm"
    cmd = [sys.executable, "-m", "rlreason", "train", "recipes/tools_synthetic.yaml", "rollout.backend=vllm",
           "train.max_steps=10", "train.save_steps=0", "eval.every_steps=10", "eval.num_problems=64",
           "train.plot=false", f"train.output_dir={out}", "train.overwrite_output_dir=true"]
    r = run(cmd, EXTRA_LIMITS["tools_vllm"], work / "tools_vllm.log", env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    return {**r, **metrics(out)}


def async_server_vllm(work: Path) -> dict:
    """The quickstart's tiny model served by vLLM (30% of the GPU), trained through it with
    one step of overlap; the server is stopped whatever happens."""
    t0 = time.perf_counter()
    limit = EXTRA_LIMITS["async_server_vllm"]
    resolve = ("from rlreason.config import load_config; from rlreason.tiny import resolve_model_path; "
               "c = load_config('recipes/quickstart.yaml', []); "
               "print(resolve_model_path(c.model, c.data.synthetic, log=lambda s: None))")
    model = subprocess.run([sys.executable, "-c", resolve], cwd=ROOT, capture_output=True, text=True,
                           timeout=limit / 3)
    if model.returncode:
        return {"status": "failed", "step": "tiny model", "log_tail": model.stderr[-1500:]}
    from rlreason.rollout.server import spawned  # lazily: every import this script needs is checked first

    try:
        with spawned(model.stdout.strip().splitlines()[-1], "--dtype", "float32", "--gpu-memory-utilization", "0.3",
                     backend="vllm", env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}, timeout_s=limit / 2,
                     log=work / "async_server_vllm.server.log") as url:
            out = work / "async_server_vllm"
            cmd = [sys.executable, "-m", "rlreason", "train", "recipes/quickstart.yaml", "rollout.backend=server",
                   f"rollout.server_url={url}", "rollout.async_steps=1", "train.max_steps=10", "train.save_steps=0",
                   "eval.every_steps=10", "eval.num_problems=64", "train.plot=false", f"train.output_dir={out}",
                   "train.overwrite_output_dir=true"]
            r = run(cmd, max(30.0, limit - (time.perf_counter() - t0)), work / "async_server_vllm.log")
            return {**r, **metrics(out), "wall_s": round(time.perf_counter() - t0, 1)}
    except RuntimeError as e:  # the server did not come up: its log's tail says why
        return {"status": "failed", "step": "server start", "log_tail": str(e)[-1500:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    ap.add_argument("--work", default="/tmp/rlreason-gpu-check")
    ap.add_argument("--only", default=None, help="comma-separated check names")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    result: dict = {"machine": machine_info(), "limits_s": {**LIMITS, **EXTRA_LIMITS}, "checks": {}}
    t_start = time.perf_counter()

    def record(name: str, value: dict) -> None:
        result["checks"][name] = value
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"{name}: {value.get('status', '')} {json.dumps(value)[:300]}", file=sys.stderr, flush=True)

    def wanted(name: str) -> bool:  # the opt-in checks only when named
        return name in only if only is not None else name not in EXTRA_LIMITS

    found = imports(work)
    gpu = cuda()
    record("env", {"status": "ok", "cuda": gpu, "imports": found})
    missing_vllm = None if found["vllm"]["ok"] else {"status": "skipped", "missing": "vllm",
                                                      "fix": PACKAGES["vllm"], "error": found["vllm"]["error"]}
    if not gpu["cuda"]:
        reason = {"status": "skipped", "missing": "a CUDA GPU", "torch": gpu.get("torch"),
                  "fix": "install a CUDA build of torch on a GPU machine"}
        for name in ("quickstart_vllm", "lora_push_vllm", "rollout_1.5b", "accelerate", *EXTRA_LIMITS):
            if wanted(name):
                record(name, reason)
        return
    if wanted("quickstart_vllm"):
        record("quickstart_vllm", missing_vllm or quickstart(work, "quickstart_vllm", []))
    if wanted("lora_push_vllm"):
        record("lora_push_vllm", missing_vllm or quickstart(
            work, "lora_push_vllm", ["model.lora.enabled=true", "model.lora.r=16", "train.learning_rate=2e-4"]))
    if wanted("rollout_1.5b"):
        out = work / "rollout_1.5b.json"
        r = missing_vllm or run([sys.executable, "benchmarks/rollout_throughput.py", "--preset", "1.5b",
                                 "--prompts", "32", "--repeats", "2", "--out", str(out)],
                                LIMITS["rollout_1.5b"], work / "rollout_1.5b.log")
        if out.is_file():
            data = json.loads(out.read_text())
            sync = data.get("sync", {})
            r = {**r, "ratio": data.get("ratio"), "plain_tokens_per_s": data.get("plain", {}).get("tokens_per_s"),
                 "rlreason_tokens_per_s": data.get("rlreason", {}).get("tokens_per_s"),
                 "sync_s": sync.get("seconds_median"), "sync_gbytes": sync.get("gbytes")}
        record("rollout_1.5b", r)
    if wanted("accelerate"):
        runs = {}
        for config in ACCELERATE_CONFIGS:
            if config.startswith("zero") and not found["deepspeed"]["ok"]:
                runs[config] = {"status": "skipped", "missing": "deepspeed", "fix": PACKAGES["deepspeed"]}
                continue
            out = work / f"accelerate-{config}"
            cmd = ["accelerate", "launch", "--config_file", f"configs/accelerate/{config}.yaml",
                   "--num_processes", "1", "--num_machines", "1", "-m", "rlreason", "train",
                   "recipes/quickstart.yaml", "train.max_steps=1", "eval.num_problems=0", "train.plot=false",
                   f"train.output_dir={out}", "train.overwrite_output_dir=true"]
            runs[config] = {**run(cmd, LIMITS["accelerate"], work / f"accelerate-{config}.log"), **metrics(out)}
            record("accelerate", {"status": "partial", "runs": runs})
        statuses = {v["status"] for v in runs.values()}
        record("accelerate", {"status": "ok" if statuses == {"ok"} else "see runs", "runs": runs})
    if wanted("tools_vllm"):
        record("tools_vllm", missing_vllm or tools_vllm(work))
    if wanted("async_server_vllm"):
        record("async_server_vllm", missing_vllm or async_server_vllm(work))


if __name__ == "__main__":
    main()
