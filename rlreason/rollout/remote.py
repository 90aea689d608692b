"""The trainer's side of server mode (`rollout.backend: server`): a RolloutEngine whose
generation happens in `rlreason serve`, elsewhere.

Prompts go as token ids, completions come back with their sampling log-probs (the
importance-sampling correction and mismatch metrics work as with the colocated engines).
Weight pushes stream in chunks: each chunk's names, dtypes and shapes over HTTP, its
tensors by broadcast over the transfer group (transfer.py); the server applies the whole
set at the last chunk. Under data parallelism rank 0 gathers every rank's prompts, sends
them as one request (vLLM batches them; N small requests in turn would leave it idle
between them) and scatters the completions back; rank 0 alone pushes weights (ranks hold
the same weights; sharded ones take part in the gathering, which is collective, and drop
the result).
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from ..types import Completion, SamplingParams
from . import transfer
from .vllm import chunked
from .wire import completion_from_json, sampling_to_json


class ServerError(ConnectionError):
    """The rollout server is unreachable or refused a request (the message says which)."""


def _with_last(items: Iterable) -> Iterator[tuple[Any, bool]]:
    it = iter(items)
    try:
        prev = next(it)
    except StopIteration:
        return
    for x in it:
        yield prev, False
        prev = x
    yield prev, True


def _address_towards(url) -> str:
    """This machine's address on the interface that routes to the server (a UDP socket's
    connect sends nothing; it only picks the route). The hostname's address can be a
    loopback alias (127.0.1.1 on Debian) that the server cannot reach."""
    host = url.hostname or "127.0.0.1"
    if host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, url.port or 80))
        return s.getsockname()[0]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _is_rank0() -> bool:
    return not _distributed() or dist.get_rank() == 0


def _gather_to_rank0(obj):
    """[obj of rank 0, obj of rank 1, ...] on rank 0, None elsewhere; [obj] alone."""
    if not _distributed():
        return [obj]
    out = [None] * dist.get_world_size() if _is_rank0() else None
    dist.gather_object(obj, out, dst=0)
    return out


def _scatter_from_rank0(objs):
    """Rank r receives objs[r] (objs given on rank 0); objs[0] alone."""
    if not _distributed():
        return objs[0]
    out = [None]
    dist.scatter_object_list(out, objs, src=0)
    return out[0]


class RemoteEngine:
    shares_module = False

    def __init__(self, url: str, tokenizer, *, seed: int = 0, timeout_s: float = 600.0,
                 transfer_host: str | None = None, chunk_bytes: int = 1 << 30, api_key: str | None = None):
        self.url = url.rstrip("/")
        self.api_key = api_key or os.environ.get("RLREASON_API_KEY") or None  # sent on every call
        self.tokenizer = tokenizer
        self.seed, self.calls = seed, 0
        self.timeout_s = timeout_s
        self.chunk_bytes = chunk_bytes
        self.info = self._wait_until_up()
        # the address the server dials to reach this trainer's transfer store
        self.transfer_host = transfer_host or _address_towards(urlparse(self.url))
        self.group = None

    # ------------------------------------------------------------ HTTP
    def _call(self, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        limit = getattr(self, "info", {}).get("max_request_bytes")  # the server would cut it off unread
        if data is not None and limit and len(data) > limit:
            raise ServerError(f"rollout server {self.url}{path}: a request of {len(data)} bytes is over the "
                              f"server's limit of {limit}; restart `rlreason serve` with a larger --max-request-mb")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout_s) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read()).get("error", "")
            except ValueError:
                msg = ""
            raise ServerError(f"rollout server {self.url}{path}: HTTP {e.code}: {msg}") from e

    def _wait_until_up(self) -> dict:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return self._call("/health", timeout=5)
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"rollout.server_url={self.url}: no rlreason server answered within "
                        f"{self.timeout_s:.0f} s ({e}); start one with `rlreason serve --model ...`") from e
                time.sleep(1.0)

    def _call_async(self, path: str, body: dict) -> tuple[threading.Thread, dict]:
        """POST in a thread: the server's handler blocks in the collective until this side
        joins it, so the request and our side of the broadcast run concurrently."""
        box: dict = {}

        def run():
            try:
                box["reply"] = self._call(path, body)
            except Exception as e:  # re-raised on the caller's thread by _join
                box["error"] = e

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t, box

    @staticmethod
    def _join(t: threading.Thread, box: dict) -> dict:
        t.join()
        if "error" in box:
            raise box["error"]
        return box["reply"]

    # ------------------------------------------------------------ protocol
    def generate(self, prompt_token_ids: list[list[int]], n: int,
                 sampling: SamplingParams) -> list[list[Completion]]:
        if sampling.seed is None:  # the per-call seed stream, checkpointed like the other engines'
            sampling = SamplingParams(**{**sampling.__dict__, "seed": self.seed * 1_000_003 + self.calls})
        self.calls += 1
        prompts = [list(p) for p in prompt_token_ids]
        shares = _gather_to_rank0(prompts)  # one list per rank, or None on other ranks
        groups = None
        if shares is not None:
            flat = [p for share in shares for p in share]
            try:
                answer = self._call("/generate", {"prompt_token_ids": flat, "n": n,
                                                  "sampling": sampling_to_json(sampling)})
                version, reply = answer.get("policy_version"), answer["completions"]
                groups, at = [], 0
                for share in shares:
                    groups.append(reply[at : at + len(share)])
                    at += len(share)
            except Exception as e:  # every rank stops with the reason, none waits in the scatter
                why = str(e) if isinstance(e, ServerError) else f"rollout server {self.url}/generate: {e!r}"
                groups = [why] * len(shares)
        mine = _scatter_from_rank0(groups if shares is None or isinstance(groups[0], str)
                                   else [(g, version) for g in groups])
        if isinstance(mine, str):
            raise ServerError(mine)
        mine, version = mine
        out = [[completion_from_json(p, c) for c in g] for p, g in zip(prompts, mine)]
        for c in (c for g in out for c in g):
            c.policy_version = version
        return out

    def _device(self) -> torch.device:
        if self.info["transfer_backend"] == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _ensure_group(self) -> None:
        if self.group is not None:
            return
        port = transfer.free_port()
        t, box = self._call_async("/init_transfer", {"host": self.transfer_host, "port": port, "world_size": 2})
        self.group = transfer.open_group(self.transfer_host, port, 0, 2, self.info["transfer_backend"])
        self._join(t, box)

    def _push(self, path: str, named: list[tuple[str, torch.Tensor]], **extra) -> None:
        extra = {k: v for k, v in extra.items() if v is not None}
        t, box = self._call_async(path, {"meta": transfer.tensor_meta(named), **extra})
        transfer.send_tensors(self.group, (x for _, x in named), self._device())
        self._join(t, box)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None:
        """`version`: the trainer step of these weights, returned with every completion the
        server samples from them (asynchronous rollouts measure staleness with it)."""
        if not _is_rank0():
            for _ in named_tensors:  # take part in a collective gather, send nothing
                pass
            return
        self._ensure_group()
        for chunk, last in _with_last(chunked(named_tensors, self.chunk_bytes)):
            self._push("/update_weights", chunk, final=last, version=version if last else None)

    def load_adapter(self, adapter: Any, version: int | None = None) -> None:
        if not _is_rank0():
            return
        if isinstance(adapter, str):
            config = (Path(adapter) / "adapter_config.json").read_text()
            tensors = load_file(str(Path(adapter) / "adapter_model.safetensors"))
        else:
            with tempfile.TemporaryDirectory() as d:
                adapter.config.save_pretrained(d)
                config = (Path(d) / "adapter_config.json").read_text()
            tensors = adapter.tensors
        self._ensure_group()
        self._push("/load_adapter", sorted(tensors.items()), config=config, version=version)

    def sleep(self) -> None:  # the server's GPUs are its own: nothing to hand back
        pass

    def wake(self) -> None:
        pass

    def rng_state(self) -> int:
        return self.calls

    def set_rng_state(self, state: Any) -> None:
        self.calls = int(state)


def from_config(cfg, ctx) -> RemoteEngine:
    """`rollout.backend: server` (registry.BACKENDS): a `rlreason serve` process elsewhere."""
    return RemoteEngine(cfg.server_url, ctx.tokenizer, seed=ctx.seed, timeout_s=cfg.server_timeout_s,
                        transfer_host=cfg.server_transfer_host, api_key=cfg.server_api_key)
