"""Shared by the distributed test and its torchrun worker: one config, one fixed batch."""
from __future__ import annotations

import json
import random
from pathlib import Path

from rlreason.batching import Sequence
from rlreason.config import load_config


def make_cfg(work: Path, name: str, steps: int = 1):
    data = work / "data.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps({"prompt": f"{a}+{a + 1}=", "answer": str(2 * a + 1)[::-1]})
                                + "\n" for a in range(10, 42)))
    return load_config(None, [
        f"model.name_or_path={work / 'model'}", f"data.source={data}", "data.template=plain",
        "rewards=[{name: exact_match}]", "rollout.max_completion_length=6", "algo.num_generations=2",
        "algo.loss_type=dapo", "algo.skip_zero_advantage=false", "train.prompts_per_step=4",
        "train.micro_batch_size=2", "train.learning_rate=1e-2", f"train.max_steps={steps}",
        "train.plot=false", "eval.num_problems=0", f"train.output_dir={work / name}",
    ])


def fixed_sequences(run) -> list[Sequence]:
    """8 sequences (4 prompts x 2), different lengths and advantages, same on every rank."""
    rng = random.Random(0)
    seqs = []
    for p in run.train_data.problems[:4]:
        prompt = run.encode(p)
        for _ in range(2):
            completion = [rng.randint(4, 20) for _ in range(rng.randint(1, 6))]
            seqs.append(Sequence(prompt, completion, rng.uniform(-1, 1), False))
    return seqs
