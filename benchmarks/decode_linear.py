"""The CPU decode's matmuls: MKL (F.linear) against oneDNN on a pre-packed weight.

Backs `rlreason/rollout/packed_linear.py` (which weights the hf engine's fused decode packs)
with numbers from the machine at hand:

  linears  microseconds a call for x [rows, h] times a weight [3h, h], 16 weights used in
           turn (as a decode step walks through its layers, so no weight is still in a
           core's cache when it comes round again), F.linear vs oneDNN on the packed
           weight, h in 128..512, rows 1, 8, 32;
  decode   whole rollouts of benchmarks/grpo_step_cpu.py's step (8 prompts x 4 samples, up
           to 64 tokens, temperature 1, seeded) through the hf engine, with packing off
           (every weight on F.linear) and at its default threshold, alternating, for
           that benchmark's model (Llama, 4 layers, hidden 256, float32) and its
           `--size large` (8 layers, hidden 768).

usage: python benchmarks/decode_linear.py --out benchmarks/results/decode_linear_cpu.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from machine import machine_info  # noqa: E402

from rlreason.rollout import packed_linear  # noqa: E402


@contextlib.contextmanager
def pack_threshold(numel: int):
    """packed_linear.PACK_MIN_NUMEL set to `numel` for the block."""
    default = packed_linear.PACK_MIN_NUMEL
    packed_linear.PACK_MIN_NUMEL = numel
    try:
        yield
    finally:
        packed_linear.PACK_MIN_NUMEL = default


def median_us(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def linears(reps: int) -> list[dict]:
    out = []
    for h in (128, 192, 256, 512):
        weights = [torch.randn(3 * h, h) for _ in range(16)]
        for rows in (1, 8, 32):
            x = torch.randn(rows, h)
            with pack_threshold(0):  # every weight packed, whatever its size
                onednn = [packed_linear.PackedLinear(w, rows_hint=rows) for w in weights]
            mkl = median_us(lambda x=x, ws=weights: [F.linear(x, w) for w in ws], reps) / 16
            dnn = median_us(lambda x=x, ps=onednn: [p(x) for p in ps], reps) / 16
            out.append({"hidden": h, "weight": [3 * h, h], "weight_numel": 3 * h * h, "rows": rows,
                        "mkl_us": round(mkl, 1), "onednn_packed_us": round(dnn, 1),
                        "packed_by_default": packed_linear.PackedLinear(weights[0]).packed is not None})
            print(out[-1], file=sys.stderr)
    return out


def decode(size: str, reps: int) -> dict:
    """Rollouts of grpo_step_cpu.py's model at `size`, packing off and on in turn (so drifts
    in the machine's speed fall on both), the same seeded work each time."""
    import tempfile

    import grpo_step_cpu as bench
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.rollout.hf import HFEngine
    from rlreason.types import SamplingParams

    work = tempfile.mkdtemp()
    bench.build_model(work, bench.SIZES[size])
    model = AutoModelForCausalLM.from_pretrained(work, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(work)
    prompts = [tok(r["prompt"])["input_ids"] for r in bench.make_rows()[: bench.PROMPTS_PER_STEP]]
    sp = SamplingParams(max_tokens=bench.SIZES[size]["max_completion_length"], temperature=1.0, top_p=1.0, seed=0)
    engine = HFEngine(model, tok, seed=0)
    thresholds = {"packed": packed_linear.PACK_MIN_NUMEL, "mkl": 1 << 62}  # the default; none packed
    times: dict[str, list[float]] = {"mkl": [], "packed": []}
    for i in range(reps + 1):  # the first pair warms up
        for mode in (("packed", "mkl") if i % 2 == 0 else ("mkl", "packed")):
            with pack_threshold(thresholds[mode]):
                t0 = time.perf_counter()
                engine.generate(prompts, bench.NUM_GENERATIONS, sp)
                times[mode].append(time.perf_counter() - t0)
    paired = [p / m for p, m in zip(times["packed"][1:], times["mkl"][1:])]
    out = {"model": {k: v for k, v in bench.SIZES[size].items() if k != "min_completion_length"},
           "rollout": f"{bench.PROMPTS_PER_STEP} prompts x {bench.NUM_GENERATIONS}, seeded",
           **{f"{m}_rollout_s_median": round(statistics.median(t[1:]), 4) for m, t in times.items()},
           **{f"{m}_rollout_s": [round(x, 4) for x in t] for m, t in times.items()},
           "paired_ratio_packed_over_mkl_median": round(statistics.median(paired), 3)}
    print(size, {k: v for k, v in out.items() if "median" in k}, file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions of each linear measurement")
    ap.add_argument("--rollouts", type=int, default=10, help="timed rollouts per mode, base size")
    ap.add_argument("--large-rollouts", type=int, default=3, help="timed rollouts per mode, large size (0: skip)")
    ap.add_argument("--out", default="benchmarks/results/decode_linear_cpu.json")
    args = ap.parse_args()
    result = {
        "settings": {"linears": "x [rows, h] @ W[3h, h]^T, 16 weights in turn, median us per call",
                     "decode": "grpo_step_cpu's model (base, large): whole rollouts, packing off (mkl) and on "
                               "in turn, median s and the median over pairs of packed / mkl",
                     "pack_min_numel": packed_linear.PACK_MIN_NUMEL,
                     "onednn_available": packed_linear.onednn_available()},
        "env": {**machine_info(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "linears": linears(args.reps),
        "decode": {"base": decode("base", args.rollouts),
                   **({"large": decode("large", args.large_rollouts)} if args.large_rollouts else {})},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
