"""Run under `torchrun --nproc_per_node N`: one optimizer step on this rank's share of a
fixed global batch, then a 2-step training run; writes what the test compares."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fixed_sequences, make_cfg  # noqa: E402

from rlreason.trainer import build_run, optimize, train  # noqa: E402


def main(work: str) -> None:
    work_p = Path(work)
    run = build_run(make_cfg(work_p, "ddp-step"), log=lambda s: None)
    acc = run.accelerator
    seqs = fixed_sequences(run)
    k = len(seqs) // acc.num_processes  # groups are contiguous and G divides k
    local = seqs[acc.process_index * k : (acc.process_index + 1) * k]
    m = optimize(run, local)
    loss = float(acc.reduce(torch.tensor(m["loss"]), reduction="sum"))
    if acc.is_main_process:
        torch.save({n: p.detach().cpu() for n, p in run.policy.named_parameters()},
                   work_p / "ddp_params.pt")
        (work_p / "ddp.json").write_text(json.dumps({"loss": loss, "world": acc.num_processes}))
    acc.wait_for_everyone()
    train(make_cfg(work_p, "ddp-train", steps=2), log=lambda s: None)


if __name__ == "__main__":
    main(sys.argv[1])
