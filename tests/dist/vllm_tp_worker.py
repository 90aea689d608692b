"""torchrun worker: two trainer ranks share one colocated vLLM engine (tensor parallel 2,
external launcher). Rank 0 asks for two prompts, rank 1 for one; each must get its own
completions, sampled from the weights the trainer last pushed. Writes tp_rank{R}.json."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serving import logprobs_of  # noqa: E402

from rlreason.rollout.vllm import VLLMEngine  # noqa: E402
from rlreason.types import SamplingParams  # noqa: E402


def main() -> None:
    model_dir, out = sys.argv[1], Path(sys.argv[2])
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    dist.init_process_group("gloo")  # as accelerate does before the engine is built
    rank = dist.get_rank()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    eng = VLLMEngine(model_dir, tok, max_model_len=64, dtype="float32", seed=0, tensor_parallel_size=2)
    texts = ["12+34=", "5+6="] if rank == 0 else ["77+1="]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    sp = SamplingParams(temperature=1.0, max_tokens=8)
    result: dict = {"rank": rank, "rounds": []}
    for round_ in range(2):
        groups = eng.generate(prompts, 2, sp)
        result["rounds"].append({
            "prompts_back": [[c.prompt_token_ids for c in g] for g in groups],
            "max_logprob_diff": max(
                float((logprobs_of(model, p, c.token_ids) - torch.tensor(c.logprobs)).abs().max())
                for p, g in zip(prompts, groups) for c in g),
        })
        torch.manual_seed(round_)  # the same update on both ranks, as DDP keeps them
        with torch.no_grad():
            for q in model.parameters():
                q.add_(torch.randn_like(q) * 0.05)
        eng.update_weights(model.named_parameters())
    result["prompts"] = prompts
    (out / f"tp_rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
