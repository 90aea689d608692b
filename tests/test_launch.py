"""Launch files: accelerate configs parse and agree with the trainer; slurm scripts are
valid bash and print the right launch command for a fake 2-node x 8-GPU allocation."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["ddp", "fsdp2", "zero2", "zero3"])
def test_accelerate_configs(name):
    cfg = yaml.safe_load((ROOT / "configs" / "accelerate" / f"{name}.yaml").read_text())
    assert cfg["distributed_type"] in {"MULTI_GPU", "FSDP", "DEEPSPEED"}
    if cfg["distributed_type"] == "DEEPSPEED":
        ds = cfg["deepspeed_config"]
        assert ds["zero_stage"] == int(name[-1])
        # the trainer accumulates micro-batches inside one optimizer step itself
        assert ds["gradient_accumulation_steps"] == 1


@pytest.mark.parametrize("script", ["train_multinode.sbatch", "train_single_node.sbatch", "train_with_server.sbatch"])
def test_slurm_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", str(ROOT / "slurm" / script)], check=True)


def test_multinode_dry_run_prints_one_launch_per_node():
    env = {**os.environ, "DRY_RUN": "1", "SLURM_NNODES": "2", "SLURM_GPUS_PER_NODE": "8",
           "SLURM_JOB_NODELIST": "gpu-a17,gpu-a18"}
    out = subprocess.run(["bash", str(ROOT / "slurm" / "train_multinode.sbatch"),
                          "recipes/grpo_lora_gsm8k.yaml", "algo.beta=0.0"], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()
    assert len(out) == 2
    for rank, line in enumerate(out):
        assert "--num_machines 2 --num_processes 16" in line
        assert f"--machine_rank {rank}" in line and "--main_process_ip gpu-a17" in line
        assert line.endswith("-m rlreason train recipes/grpo_lora_gsm8k.yaml algo.beta=0.0")


def test_single_node_dry_run():
    env = {**os.environ, "DRY_RUN": "1", "SLURM_GPUS_PER_NODE": "4"}
    out = subprocess.run(["bash", str(ROOT / "slurm" / "train_single_node.sbatch"), "recipes/x.yaml"],
                         env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "--num_processes 4" in out and "configs/accelerate/ddp.yaml" in out


def test_server_mode_dry_run_puts_the_server_on_the_first_node():
    env = {**os.environ, "DRY_RUN": "1", "SLURM_NNODES": "3", "SLURM_GPUS_PER_NODE": "8",
           "SLURM_JOB_NODELIST": "gpu-a1,gpu-a2,gpu-a3"}
    out = subprocess.run(["bash", str(ROOT / "slurm" / "train_with_server.sbatch"), "recipes/grpo_full_gsm8k.yaml",
                          "algo.beta=0.0"], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()
    assert out[0].startswith("gpu-a1: rlreason serve --model Qwen/Qwen2.5-0.5B-Instruct")
    assert len(out) == 3
    for rank, line in enumerate(out[1:]):
        assert line.startswith(f"gpu-a{rank + 2}: accelerate launch")
        assert "--num_machines 2 --num_processes 16" in line and f"--machine_rank {rank} " in line
        assert "--main_process_ip gpu-a2" in line
        assert line.endswith("train recipes/grpo_full_gsm8k.yaml algo.beta=0.0 rollout.backend=server "
                             "rollout.server_url=http://gpu-a1:8000")
