"""Run under `torchrun --nproc_per_node 2`: a guided (POPE) run where only rank 1's share
ever earns a reward (a scripted reward: unguided prompts on rank 1 score 1). Probing and
pool refresh must still leave both ranks with the same verdicts and the same pool; each
rank writes its guide's state for the test to compare."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from rlreason import trainer as T
from rlreason.config import load_config
from rlreason.rewards import register_reward


@register_reward("rank1_unguided")
def rank1_unguided(completion, problem) -> float:
    return float(dist.get_rank() == 1 and not problem.metadata.get("guided"))


def main(work: str) -> None:
    w = Path(work)
    data = w / "guided.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps({"prompt": f"{a}+{a}=", "answer": str(2 * a)[::-1],
                                            "solution": str(2 * a)[::-1]}) + "\n" for a in range(10, 26)))
    cfg = load_config(None, [
        f"model.name_or_path={w / 'model'}", f"data.source={data}", "data.solution_key=solution",
        "data.template=plain", "rewards=[{name: rank1_unguided}]", "rollout.max_completion_length=4",
        "algo.num_generations=2", "algo.skip_zero_advantage=false", "train.prompts_per_step=4",
        "train.micro_batch_size=4", "train.max_steps=2", "train.plot=false", "train.save_steps=0",
        "eval.num_problems=0", f"train.output_dir={w / 'guided'}", "train.use_cpu=true",
        "guidance.enabled=true", "guidance.probe_k=2", "guidance.probe_limit=8", "guidance.ladder=[0.5]",
    ])
    runs = []
    real = T.setup_guidance

    def keep(run, out, log):
        real(run, out, log)
        runs.append(run)

    T.setup_guidance = keep
    try:
        last = T.train(cfg, log=lambda s: None)
    finally:
        T.setup_guidance = real
    guide = runs[0].guide
    (w / f"guide-{dist.get_rank()}.json").write_text(json.dumps(
        {**guide.state_dict(), "hints": guide.hints, "style": guide.cfg.style,
         "frac_prompts": last["guided/frac_prompts"], "solved_metric": last["guided/solved_unguided"]}))


if __name__ == "__main__":
    main(sys.argv[1])
