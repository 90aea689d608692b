"""Server mode (`rlreason serve` + rollout.backend=server) with the transformers engine on
CPU: the HTTP contract, weight and LoRA pushes over the gloo transfer group, and GRPO
through a server. The same server with vLLM is tested in test_vllm_engine.py."""
from __future__ import annotations

import http.client
import importlib.util
import json
import socket
import threading
import time
import urllib.request
from urllib.parse import urlparse

import pytest
import torch
from serving import logprobs_of, running_server

from rlreason.rollout import transfer
from rlreason.rollout.remote import RemoteEngine, ServerError
from rlreason.tiny import char_tokenizer, tiny_llama
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
    from rlreason.tiny import resolve_model_path
    from rlreason.trainer import train

    cfg = tiny_recipe("train.max_steps=4", "rollout.backend=server")
    path = resolve_model_path(cfg.model, cfg.data.synthetic, log=lambda s: None)  # the warm start
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


# ------------------------------------------------------------------ hardening
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def guarded(tiny_dir):
    """One server with an API key and a 1 s socket timeout, shared by the tests below."""
    with running_server(tiny_dir, "--api-key", KEY, "--request-timeout-s", "1") as url:
        yield url


def _post(url: str, path: str, body: dict | None = None, headers: dict | None = None,
          timeout: float = 30) -> tuple[int, dict]:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("POST", path, None if body is None else json.dumps(body).encode(), headers or {})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def _connect(url: str) -> socket.socket:
    u = urlparse(url)
    return socket.create_connection((u.hostname, u.port), timeout=10)


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def _generate(engine) -> None:
    g = engine.generate([char_tokenizer().encode("1+1=")], 1, SamplingParams(max_tokens=4, seed=0))
    assert len(g) == 1 and len(g[0]) == 1


def test_serve_binds_to_loopback_by_default():
    from rlreason.cli import build_parser

    assert build_parser().parse_args(["serve", "--model", "m"]).host == "127.0.0.1"


def test_serve_beyond_loopback_needs_an_api_key(monkeypatch, capsys):
    from rlreason.cli import main

    monkeypatch.delenv("RLREASON_API_KEY", raising=False)
    argv = ["serve", "--model", "/nonexistent/model", "--backend", "hf", "--host", "0.0.0.0", "--port", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --host 0.0.0.0") and "--api-key" in err and "RLREASON_API_KEY" in err
    assert err.count("\n") == 1
    monkeypatch.setenv("RLREASON_API_KEY", "k")  # with a key it goes on, to loading the model
    assert main(argv) == 2
    assert "--model '/nonexistent/model': cannot load it" in capsys.readouterr().err


def test_serve_without_vllm_names_the_hf_backend(tiny_dir, capsys):
    from rlreason.cli import main

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    assert main(["serve", "--model", str(tiny_dir), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --backend vllm needs vLLM") and "--backend hf" in err
    assert "Traceback" not in err and "rollout.backend" not in err


def test_api_key_guards_every_endpoint_but_health(guarded, monkeypatch):
    monkeypatch.delenv("RLREASON_API_KEY", raising=False)
    health = json.loads(urllib.request.urlopen(guarded + "/health").read())  # no key needed
    assert health["ok"]
    for engine in (RemoteEngine(guarded, char_tokenizer()), RemoteEngine(guarded, char_tokenizer(), api_key="wrong")):
        with pytest.raises(ServerError, match="HTTP 401: /generate: missing or wrong API key.*server_api_key"):
            _generate(engine)
    assert _post(guarded, "/close_transfer")[0] == 401
    _generate(RemoteEngine(guarded, char_tokenizer(), api_key=KEY))
    monkeypatch.setenv("RLREASON_API_KEY", KEY)  # the trainer's default
    _generate(RemoteEngine(guarded, char_tokenizer()))


def test_oversized_and_malformed_bodies(guarded):
    engine = RemoteEngine(guarded, char_tokenizer(), api_key=KEY)
    with _connect(guarded) as s:  # announces 100 MB, sends none of it: answered at once
        t0 = time.monotonic()
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Length: 100000000\r\n\r\n")
        reply = _read_all(s)
        assert time.monotonic() - t0 < 2
    assert reply.startswith(b"HTTP/1.0 413") and b"--max-request-mb" in reply
    _generate(engine)
    for bad in ("-5", "abc", "1_000"):
        code, body = _post(guarded, "/generate", None, {**AUTH, "Content-Length": bad})
        assert code == 400 and "Content-Length" in body["error"]
    assert _post(guarded, "/close_transfer", None, AUTH) == (200, {"ok": True})  # no body: {}
    with pytest.raises(ServerError, match="over the server's limit.*--max-request-mb"):  # checked before sending
        engine._call("/generate", {"prompt_token_ids": [[5] * 3_000_000]})


def test_a_stalled_body_is_dropped_after_the_request_timeout(guarded):
    engine = RemoteEngine(guarded, char_tokenizer(), api_key=KEY)
    with _connect(guarded) as s:
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Length: 1000\r\n\r\n" + b"[" * 10)
        t0 = time.monotonic()
        _generate(engine)  # served meanwhile
        assert _read_all(s) == b""  # closed without an answer
        assert time.monotonic() - t0 < 1 + 2


def test_init_transfer_dials_only_the_caller(guarded):
    t0 = time.monotonic()
    code, body = _post(guarded, "/init_transfer", {"host": "10.255.255.1", "port": 1234}, AUTH)
    assert code == 403 and "--transfer-allow 10.255.255.1" in body["error"]
    assert time.monotonic() - t0 < 2
    code, body = _post(guarded, "/init_transfer", {"host": "127.0.0.1", "port": 1234, "timeout_s": 10_000}, AUTH)
    assert code == 400 and "timeout_s" in body["error"]


def test_init_transfer_connects_outside_the_engine_lock(guarded, tiny_dir):
    """The server waits for the trainer's store longer than its socket timeout without
    blocking /generate, answers afterwards, and the group it opened carries a push."""
    from transformers import AutoModelForCausalLM

    engine = RemoteEngine(guarded, char_tokenizer(), api_key=KEY)
    port = transfer.free_port("127.0.0.1")
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(r=_post(
        guarded, "/init_transfer", {"host": "127.0.0.1", "port": port, "timeout_s": 60}, AUTH)))
    t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    _generate(engine)  # while the server is still dialling
    assert time.monotonic() - t0 < 2
    time.sleep(1.5)  # past the 1 s --request-timeout-s
    engine.group = transfer.open_group("127.0.0.1", port, 0, 2, "gloo", timeout_s=60)
    t.join(60)
    assert box["r"] == (200, {"ok": True})
    pushes = json.loads(urllib.request.urlopen(guarded + "/health").read())["pushes"]
    engine.update_weights(AutoModelForCausalLM.from_pretrained(tiny_dir).named_parameters())  # unchanged weights
    assert json.loads(urllib.request.urlopen(guarded + "/health").read())["pushes"] == pushes + 1


def test_bad_token_ids_and_n_get_400(guarded):
    engine = RemoteEngine(guarded, char_tokenizer(), api_key=KEY)
    vocab = len(char_tokenizer())
    for bad, shown in [(vocab, str(vocab)), (-1, "-1"), ("a", "'a'"), (1.5, "1.5"), (True, "True")]:
        with pytest.raises(ServerError, match=f"HTTP 400: .*prompt_token_ids: {shown} is not a token id.*"
                                              f"\\[0, {vocab}\\), the vocab size"):
            engine._call("/generate", {"prompt_token_ids": [[5, bad]]})
    for n in (0, "2", 1.5):
        with pytest.raises(ServerError, match="HTTP 400: .*n: .*expected an int >= 1"):
            engine._call("/generate", {"prompt_token_ids": [[5]], "n": n})
