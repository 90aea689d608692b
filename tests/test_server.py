"""Server mode (`rlreason serve` + rollout.backend=server) with the transformers engine on
CPU: the HTTP contract, weight and LoRA pushes over the gloo transfer group, and GRPO
through a server. The same server with vLLM is tested in test_vllm_engine.py."""
from __future__ import annotations

import json
import urllib.request

import pytest
import torch
from serving import logprobs_of, running_server

from rlreason.models import char_tokenizer, tiny_llama
from rlreason.rollout.remote import RemoteEngine, ServerError
from rlreason.types import Adapter, SamplingParams


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("served-tiny")
    tok = char_tokenizer()
    tiny_llama(tok, 2, 64, 128, 4, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _check(engine, model, prompt, seed):
    c = engine.generate([prompt], 2, SamplingParams(temperature=1.0, max_tokens=8, seed=seed))[0]
    for comp in c:
        diff = (logprobs_of(model, prompt, comp.token_ids) - torch.tensor(comp.logprobs)).abs().max()
        assert diff < 1e-4, float(diff)
    return c


def test_served_completions_follow_pushed_weights_and_adapters(tiny_dir):
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    tok = char_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    prompt = tok.encode("12+34=")
    with running_server(tiny_dir) as url:
        engine = RemoteEngine(url, tok, seed=0, chunk_bytes=64 * 1024)  # several chunks per push
        before = _check(engine, model, prompt, seed=5)  # the server's own starting weights
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        engine.update_weights(model.named_parameters())
        after = _check(engine, model, prompt, seed=5)  # same seed, new weights: new log-probs
        assert [c.logprobs for c in after] != [c.logprobs for c in before]

        lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        for step in range(2):  # the first push wraps the served model, the second replaces it
            with torch.no_grad():
                for n, p in lora.named_parameters():
                    if "lora_B" in n:
                        p.normal_(0, 0.3)
            engine.load_adapter(Adapter(lora.peft_config["default"], get_peft_model_state_dict(lora)))
            _check(engine, lora, prompt, seed=step)
        health = json.loads(urllib.request.urlopen(url + "/health").read())
        assert health["pushes"] == 3 and health["transfer_backend"] == "gloo"

        with pytest.raises(ServerError, match="prompt_token_ids: expected a list of non-empty lists"):
            engine._call("/generate", {"prompt_token_ids": [[]], "n": 1})
        with pytest.raises(ServerError, match="sampling: unknown fields \\['temprature'\\]"):
            engine._call("/generate", {"prompt_token_ids": [prompt], "sampling": {"temprature": 1.0}})


def test_no_server_names_the_url_and_the_command():
    with pytest.raises(ServerError, match="rollout.server_url=http://127.0.0.1:9.*rlreason serve"):
        RemoteEngine("http://127.0.0.1:9", char_tokenizer(), timeout_s=1)


@pytest.mark.slow
def test_grpo_through_a_server_trains_and_syncs_every_step(tiny_recipe, tmp_path):
    from rlreason.logger import read_metrics
    from rlreason.models import load_policy
    from rlreason.trainer import train

    cfg = tiny_recipe("train.max_steps=4", "rollout.backend=server")
    _, _, path = load_policy(cfg.model, cfg.data.synthetic, log=lambda s: None)  # the warm start
    with running_server(path) as url:
        train(cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"server_url": url})}),
              log=lambda s: None)
        health = json.loads(urllib.request.urlopen(url + "/health").read())
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert health["pushes"] >= 4  # before every rollout after a step, and before each evaluation
    # the server samples from exactly the trainer's weights (same fp32 math): no mismatch
    assert all(r["logprob_diff_max"] < 1e-4 for r in rows if "logprob_diff_max" in r)


@pytest.mark.slow
def test_data_parallel_ranks_share_one_server_and_rank0_pushes(tmp_path):
    """Two trainer processes (torchrun, gloo) against one server: both sample from it,
    weights are pushed once per step (by rank 0), and the run logs both ranks."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    from rlreason.logger import read_metrics

    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    tok = char_tokenizer()
    tiny_llama(tok, 2, 64, 128, 4, seed=0).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    worker = Path(__file__).resolve().parent / "dist" / "server_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    with running_server(tmp_path / "model") as url:
        res = subprocess.run(["torchrun", "--nproc_per_node", "2", "--standalone", str(worker),
                              str(tmp_path), url], env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        health = json.loads(urllib.request.urlopen(url + "/health").read())
    rows = [r for r in read_metrics(tmp_path / "server-train" / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["world_size"] == 2
    assert health["pushes"] == 2  # before each step's rollout, from rank 0 only
    assert health["requests"] == 2  # one request per rollout: rank 0 sent both ranks' prompts


def test_serve_with_a_bad_model_names_the_flag(capsys):
    from rlreason.cli import main

    assert main(["serve", "--model", "/nonexistent/model", "--backend", "hf", "--port", "0"]) == 2
    assert "--model '/nonexistent/model': cannot load it" in capsys.readouterr().err


def test_training_against_no_server_stops_with_the_url(tmp_path, capsys):
    from rlreason.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("rollout: {backend: server, server_url: 'http://127.0.0.1:9', server_timeout_s: 1}\n")
    assert main(["train", str(recipe), "train.max_steps=1", f"train.output_dir={tmp_path / 'out'}",
                 "model.tiny.warmstart_steps=0", "eval.num_problems=0"]) == 2
    assert "rollout.server_url=http://127.0.0.1:9: no rlreason server answered" in capsys.readouterr().err
