"""Peak memory of the training log-prob computation, rlreason's op vs the plain expression.

One training micro-batch through a Llama with a large vocabulary (150k, like Qwen's),
tiny otherwise, so the [tokens, vocab] tensors dominate: forward to the logits, log-probs
and entropy of the completion tokens, backward. Each variant runs in a fresh subprocess
(CPU) and reports its peak resident memory above the point where the batch is ready.

  plain     the expression most trainers write: logits[completion positions] -> float32
            -> / temperature -> logsumexp and gather; entropy from a full softmax
  rlreason  `rlreason.batching.completion_logprobs` (algos/token_logprobs.py)

usage: python benchmarks/logprob_memory.py --out benchmarks/results/logprob_memory.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def measure(variant: str, layout: str, vocab: int, seqs: int, temperature: float) -> dict:
    import gc
    import random
    import resource

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlreason.batching import Sequence, collate, completion_logprobs

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=2, max_position_embeddings=1024))
    rng = random.Random(0)
    batch_seqs = [Sequence([rng.randrange(3, vocab) for _ in range(16)],
                           [rng.randrange(3, vocab) for _ in range(rng.randint(100, 256))], 1.0, False)
                  for _ in range(seqs)]
    batch = collate(batch_seqs, 0, "cpu", pack=layout == "packed", attn_implementation="sdpa",
                    share_prompts=True)
    batch.pop("flat", None)  # both variants on the packed rows: this compares the log-prob op only
    mask = batch["completion_mask"]
    gc.collect()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if variant == "rlreason":
        logp, entropy = completion_logprobs(model, batch, temperature, with_entropy=True)
        entropy = entropy * mask
    else:  # the plain expression, on the same completion positions
        if "gather" in batch:
            src, dst_b, dst_t, targets = batch["gather"]
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                           attention_mask=batch["attention_mask"], use_cache=False).logits.flatten(0, 1)[src]
        else:
            ids, P = batch["input_ids"], batch["prompt_len"]
            logits = model(input_ids=ids, attention_mask=batch["attention_mask"],
                           logits_to_keep=ids.size(1) - P + 1, use_cache=False).logits[:, :-1]
            targets = ids[:, P:]
        x = logits.float() / temperature
        lse = x.logsumexp(-1)
        logp = x.gather(-1, targets[..., None]).squeeze(-1) - lse
        with torch.no_grad():
            entropy = lse - (torch.softmax(x, -1) * x).sum(-1)
        if "gather" in batch:
            logp = logp.new_zeros(mask.shape).index_put((dst_b, dst_t), logp)
            entropy = entropy.new_zeros(mask.shape).index_put((dst_b, dst_t), entropy)
        entropy = entropy * mask
    (logp * mask).sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    n = int(mask.sum())
    return {"variant": variant, "layout": layout, "completion_tokens": n, "vocab": vocab,
            "peak_above_start_mib": round((peak - start) / 1024, 1),
            "bytes_per_token_vocab_entry": round((peak - start) * 1024 / (n * vocab), 2),
            "logprob_sum": round(float((logp.detach() * mask).sum()), 3),
            "entropy_sum": round(float(entropy.sum()), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=150_000)
    ap.add_argument("--seqs", type=int, default=16, help="sequences in the micro-batch (100-256 completion tokens)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--out", default="benchmarks/results/logprob_memory.json")
    ap.add_argument("--one", nargs=2, metavar=("VARIANT", "LAYOUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.vocab, args.seqs, args.temperature)))
        return
    from machine import machine_info

    rows = []
    for layout in ("packed", "padded"):
        for variant in ("plain", "rlreason"):
            res = subprocess.run([sys.executable, __file__, "--one", variant, layout, "--vocab", str(args.vocab),
                                  "--seqs", str(args.seqs), "--temperature", str(args.temperature)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    result = {"settings": {"model": "Llama, hidden 64, 2 layers, float32, random init", "vocab": args.vocab,
                           "sequences": args.seqs, "prompt_tokens": 16, "completion_tokens": "100-256 each",
                           "temperature": args.temperature, "with_entropy": True, "device": "cpu",
                           "peak": "ru_maxrss of a fresh subprocess, above its value once the batch is built"},
              "runs": rows, "env": machine_info()}
    for layout in ("packed", "padded"):
        plain, ours = (next(r for r in rows if r["layout"] == layout and r["variant"] == v)
                       for v in ("plain", "rlreason"))
        result[f"{layout}_peak_ratio"] = round(ours["peak_above_start_mib"] / plain["peak_above_start_mib"], 3)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
