"""Shared by the server-mode tests: start `rlreason serve` in a subprocess, and the
reference log-probs a served model must reproduce."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request

import torch

from rlreason.rollout.transfer import free_port


def logprobs_of(model, prompt: list[int], tokens: list[int], banned: tuple[int, ...] = (),
                held: list[bool] | None = None) -> torch.Tensor:
    """log p(tokens | prompt) under `model`, one forward (temperature 1). At the positions
    `held` marks (a minimum length in force), the `banned` ids are excluded and the rest
    renormalised: the distribution a sampler with min_tokens draws from."""
    x = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, len(prompt) - 1 : -1].float()
    if banned and held is not None:
        rows = torch.tensor(held)
        logits[rows.nonzero()[:, 0][:, None], torch.tensor(banned)[None]] = float("-inf")
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]


@contextlib.contextmanager
def running_server(model_dir, *extra: str, backend: str = "hf", timeout_s: float = 180.0):
    """`rlreason serve` on a free port; yields its URL; stops it afterwards."""
    port = free_port("127.0.0.1")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rlreason", "serve", "--model", str(model_dir),
                             "--backend", backend, "--host", "127.0.0.1", "--port", str(port),
                             "--dtype", "float32", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"rlreason serve exited {proc.returncode}: {proc.stdout.read()[-3000:]}")
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
