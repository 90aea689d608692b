"""Peak memory of the one-token-rollout loss, rlreason's chunked op vs the plain expression.

One micro-batch of N target positions (default 2,048) through a float32 output projection
to a 150k vocabulary (like Qwen's), hidden size 64, so the [tokens, vocab] tensors
dominate: logits = hidden @ W^T, the OTR loss and its metrics, backward into W and the
hidden states (as in `sft.py`). Each variant runs in a fresh subprocess (CPU) and
reports its peak resident memory above the point where hidden states and weights exist.

  plain     the loss written out (what `algos/otr.py` computed before): log-softmax,
            tempered softmax, weights, rewards and their products over the full [N, V]
  rlreason  `rlreason.algos.otr.otr_loss`: chunks of rows in float32, saving only the
            logits and per-row vectors; backward recomputes per chunk

Modes: sampled (K candidates per position, the same draws from the same generator; the
default, ~1 min on 2 cores) and closed_form (the expectation over the tempered
distribution; another ~1 min).

usage: python benchmarks/otr_memory.py --modes sampled closed_form --out benchmarks/results/otr_memory.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def plain_otr_loss(logits, targets, *, num_samples=256, temperature=1.0, beta=-0.1,
                   closed_form=False, generator=None, samples=None):
    """The plain expression (five [N, V] float32 tensors): rlreason's OTR loss before it was
    chunked; the reference the benchmark measures and tests/test_otr.py compares against."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    with torch.no_grad():
        tempered = torch.softmax(logits.float() / temperature, dim=-1)
        if closed_form:
            weights = tempered.clone()
        else:
            if samples is None:
                samples = torch.multinomial(tempered, num_samples, replacement=True, generator=generator)
            weights = torch.zeros_like(logp).scatter_add_(
                -1, samples, torch.full(samples.shape, 1.0 / samples.size(-1), device=logp.device))
        reward = torch.full_like(logp, beta)
        reward.scatter_(-1, targets[:, None], 1.0)
        mean_reward = (weights * reward).sum(-1).mean()
        weights = weights * reward
    loss = -(weights * logp).sum(-1).mean()
    with torch.no_grad():
        p = logp.exp()
        metrics = {"reward": float(mean_reward),
                   "gt_prob": float(p.gather(-1, targets[:, None]).mean()),
                   "entropy": float(-(p * logp).sum(-1).mean())}
    return loss, metrics


def measure(variant: str, mode: str, vocab: int, tokens: int, num_samples: int,
            temperature: float, beta: float) -> dict:
    import gc
    import resource
    import time

    import torch

    from rlreason.algos.otr import _rows_per_chunk, otr_loss

    torch.manual_seed(0)
    hidden = torch.randn(tokens, 64, requires_grad=True)
    head = torch.nn.Linear(64, vocab, bias=False)
    targets = torch.randint(0, vocab, (tokens,))
    gen = torch.Generator().manual_seed(0)
    fn = otr_loss if variant == "rlreason" else plain_otr_loss
    gc.collect()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    logits = head(hidden)
    loss, m = fn(logits, targets, num_samples=num_samples, temperature=temperature, beta=beta,
                 closed_form=mode == "closed_form", generator=gen)
    del logits
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"variant": variant, "mode": mode, "tokens": tokens, "vocab": vocab,
            "chunk_rows": _rows_per_chunk(vocab) if variant == "rlreason" else None,
            "peak_above_start_mib": round((peak - start) / 1024, 1),
            "bytes_per_token_vocab_entry": round((peak - start) * 1024 / (tokens * vocab), 2),
            "seconds": round(seconds, 2), "loss": round(loss.item(), 6),
            **{k: round(v, 6) for k, v in m.items()},
            "grad_norm_head": round(float(head.weight.grad.norm()), 6)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=150_000)
    ap.add_argument("--tokens", type=int, default=2048, help="target positions in the micro-batch")
    ap.add_argument("--num-samples", type=int, default=256, help="K (sft.otr_num_samples)")
    ap.add_argument("--temperature", type=float, default=1.2, help="tau (sft.otr_temperature)")
    ap.add_argument("--beta", type=float, default=-0.1, help="sft.otr_beta")
    ap.add_argument("--modes", nargs="+", choices=("sampled", "closed_form"), default=["sampled"])
    ap.add_argument("--out", default="benchmarks/results/otr_memory.json")
    ap.add_argument("--one", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.vocab, args.tokens, args.num_samples,
                                 args.temperature, args.beta)))
        return
    import torch
    from machine import machine_info

    rows = []
    for mode in args.modes:
        for variant in ("plain", "rlreason"):
            res = subprocess.run([sys.executable, __file__, "--one", variant, mode, "--vocab", str(args.vocab),
                                  "--tokens", str(args.tokens), "--num-samples", str(args.num_samples),
                                  "--temperature", str(args.temperature), "--beta", str(args.beta)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    result = {"settings": {"model": "output projection only: hidden [tokens, 64] @ W[vocab, 64]^T, float32",
                           "modes": args.modes, "vocab": args.vocab, "tokens": args.tokens,
                           "num_samples": args.num_samples,
                           "temperature": args.temperature, "beta": args.beta, "device": "cpu",
                           "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                           "peak": "ru_maxrss of a fresh subprocess, above its value once hidden states "
                                   "and weights are built (includes the logits and their gradient)"},
              "runs": rows, "env": machine_info()}
    for mode in args.modes:
        plain, ours = (next(r for r in rows if r["mode"] == mode and r["variant"] == v)
                       for v in ("plain", "rlreason"))
        result[f"{mode}_peak_ratio"] = round(ours["peak_above_start_mib"] / plain["peak_above_start_mib"], 3)
        result[f"{mode}_same_loss"] = abs(ours["loss"] - plain["loss"]) <= 1e-5 * max(1.0, abs(plain["loss"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
