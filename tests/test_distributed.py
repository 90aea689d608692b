"""Two processes (torchrun, gloo on CPU) do the same optimizer step as one process with the
same global batch; batch semantics are checked against the world size up front."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "dist"))
from common import fixed_sequences, make_cfg  # noqa: E402

from rlreason.config import load_config  # noqa: E402
from rlreason.logger import read_metrics  # noqa: E402
from rlreason.tiny import char_tokenizer, tiny_llama  # noqa: E402
from rlreason.trainer import build_run, optimize  # noqa: E402

WORKER = Path(__file__).resolve().parent / "dist" / "ddp_worker.py"


def test_batch_that_does_not_split_over_the_world_names_the_numbers():
    with pytest.raises(ValueError, match="prompts_per_step=6 does not split over 4 processes.*e.g. 8"):
        load_config(None, ["train.prompts_per_step=6"]).check_world(4)
    load_config(None, ["train.prompts_per_step=8"]).check_world(4)
    with pytest.raises(ValueError, match="rollout.vllm_tensor_parallel_size=3 must divide"):
        load_config(None, ["rollout.backend=vllm", "rollout.vllm_tensor_parallel_size=3"]).check_world(4)
    load_config(None, ["rollout.backend=vllm", "rollout.vllm_tensor_parallel_size=2"]).check_world(1)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_process_ddp_step_equals_one_process(tmp_path):
    tok = char_tokenizer()
    tiny_llama(tok, 2, 64, 128, 4, seed=0).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(["torchrun", "--nproc_per_node", "2", "--standalone", str(WORKER),
                          str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    assert ddp["world"] == 2
    # the same step in one process, on the whole global batch
    cfg = make_cfg(tmp_path, "single")  # on the CPU like the gloo ranks, also where a GPU is visible
    run = build_run(cfg.model_copy(update={"train": cfg.train.model_copy(update={"use_cpu": True})}),
                    log=lambda s: None)
    m = optimize(run, fixed_sequences(run))
    assert m["loss"] == pytest.approx(ddp["loss"], rel=1e-5, abs=1e-7)
    ddp_params = torch.load(tmp_path / "ddp_params.pt")
    diff = max(float((p.detach().cpu() - ddp_params[n]).abs().max()) for n, p in run.policy.named_parameters())
    print(f"max |weight difference| after the step: {diff:.2e}")
    # Adam moves each weight by ~lr whatever the gradient's size, so summation-order noise
    # in near-zero gradients shows up at a small fraction of lr: allow 0.1% of one step
    assert diff < 1e-3 * run.cfg.train.learning_rate
    rows = read_metrics(tmp_path / "ddp-train" / "metrics.jsonl")
    assert rows[0]["world_size"] == 2  # a one-process run cannot pass for a two-process one


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_process_guidance_keeps_one_pool(tmp_path):
    """POPE under two processes where only rank 1's share ever earns a reward: probing
    splits the problems and gathers the rewards, refresh gathers the step's outcomes, so
    both ranks hold the same verdicts, hints and pool, and rank 1's solves leave it on both."""
    tok = char_tokenizer()
    tiny_llama(tok, 1, 32, 64, 2, seed=0).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(["torchrun", "--nproc_per_node", "2", "--standalone",
                          str(WORKER.parent / "guidance_worker.py"), str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    g0, g1 = (json.loads((tmp_path / f"guide-{r}.json").read_text()) for r in (0, 1))
    assert g0 == g1
    verdicts = json.loads((tmp_path / "guided" / "hardness.json").read_text())
    hard = sorted(pid for pid, v in verdicts.items() if v["hard"])
    assert len(verdicts) == 8 and len(hard) == 4  # rank 0's half of the probe: never solved
    assert all(v["hint_works"] is False for pid, v in verdicts.items() if v["hard"])
    assert sorted(g0["hints"]) == hard and g0["style"] == "prefill"
    # two steps of 2 twin pairs; each step rank 1's unguided twin is solved, on both ranks
    assert len(g0["solved"]) == 2 and sorted(g0["pool"] + g0["solved"]) == hard
    assert g0["solved_metric"] == 2 and g0["frac_prompts"] == 0.5
