"""`rlreason serve`: a rollout engine on dedicated GPUs, for trainers elsewhere.

For users who split generation and training across GPUs or nodes: one server holds a vLLM
engine (or the transformers one, which is how this is tested on CPUs); trainers send
prompt token ids over HTTP and get completions with their log-probs back, exactly the
RolloutEngine contract; the trainer pushes new weights or a LoRA adapter after every
optimizer step through a process group of their own (NCCL between GPUs, gloo on CPUs;
see transfer.py): metadata over HTTP, tensors by broadcast, never through disk.

Why the standard library's HTTP server: the payloads are a few JSON lists per step and
calls are serialised on one engine anyway; a web framework would add a dependency and
nothing the trainer uses. Requests are handled one at a time under a lock, so a weight
push and a generation never interleave.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch

from ..types import Completion, SamplingParams
from . import transfer


def completion_to_json(c: Completion) -> dict[str, Any]:
    return {"token_ids": c.token_ids, "logprobs": c.logprobs, "finish_reason": c.finish_reason}


def completion_from_json(prompt: list[int], d: dict[str, Any]) -> Completion:
    return Completion(prompt_token_ids=list(prompt), token_ids=list(d["token_ids"]),
                      logprobs=[float(x) for x in d["logprobs"]], finish_reason=d["finish_reason"])


def sampling_from_json(d: dict[str, Any]) -> SamplingParams:
    known = SamplingParams.__dataclass_fields__
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"sampling: unknown fields {unknown}; expected some of {sorted(known)}")
    d = dict(d)
    d["stop_token_ids"] = tuple(d.get("stop_token_ids", ()))
    d["stop"] = tuple(d.get("stop", ()))
    return SamplingParams(**d)


def sampling_to_json(sp: SamplingParams) -> dict[str, Any]:
    d = asdict(sp)
    d["stop_token_ids"], d["stop"] = list(sp.stop_token_ids), list(sp.stop)
    return d


class RolloutService:
    """The server's state: one engine, the transfer group, chunks of a push in flight."""

    def __init__(self, engine, *, model: str, backend: str, device: torch.device,
                 tie_word_embeddings: bool):
        self.engine, self.model, self.backend, self.device = engine, model, backend, device
        self.transfer_backend = "nccl" if device.type == "cuda" else "gloo"
        self.tie_word_embeddings = tie_word_embeddings
        self.group = None
        self.pending: list[tuple[str, torch.Tensor]] = []
        self.lock = threading.Lock()
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.adapter_dir = tempfile.mkdtemp(prefix="rlreason-served-lora-", dir=shm)
        self.pushes = 0
        self.requests = 0  # generate calls served

    def health(self, _: dict) -> dict:
        return {"ok": True, "model": self.model, "backend": self.backend,
                "transfer_backend": self.transfer_backend, "pushes": self.pushes, "requests": self.requests,
                "tie_word_embeddings": self.tie_word_embeddings}

    def generate(self, req: dict) -> dict:
        prompts = req["prompt_token_ids"]
        if not isinstance(prompts, list) or not all(isinstance(p, list) and p for p in prompts):
            raise ValueError("prompt_token_ids: expected a list of non-empty lists of token ids")
        groups = self.engine.generate(prompts, int(req.get("n", 1)), sampling_from_json(req.get("sampling", {})))
        self.requests += 1
        return {"completions": [[completion_to_json(c) for c in g] for g in groups]}

    def init_transfer(self, req: dict) -> dict:
        if self.group is not None:
            self.close_transfer({})
        self.group = transfer.open_group(req["host"], int(req["port"]), 1, int(req.get("world_size", 2)),
                                         self.transfer_backend, timeout_s=float(req.get("timeout_s", 300)))
        return {"ok": True}

    def _receive(self, meta: list) -> list[tuple[str, torch.Tensor]]:
        if self.group is None:
            raise ValueError("no transfer group: POST /init_transfer first")
        return transfer.receive_tensors(self.group, meta, self.device)

    def update_weights(self, req: dict) -> dict:
        self.pending.extend(self._receive(req["meta"]))
        if req.get("final", True):
            weights, self.pending = self.pending, []
            self.engine.update_weights(weights)
            self.pushes += 1
        return {"ok": True, "received": len(req["meta"])}

    def load_adapter(self, req: dict) -> dict:
        from safetensors.torch import save_file

        tensors = dict(self._receive(req["meta"]))
        folder = Path(self.adapter_dir)
        (folder / "adapter_config.json").write_text(req["config"])
        save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
        self.engine.load_adapter(str(folder))
        self.pushes += 1
        return {"ok": True, "received": len(tensors)}

    def close_transfer(self, _: dict) -> dict:
        self.group = None  # the group and its store are released with the object
        return {"ok": True}

    ROUTES = {"/health": "health", "/generate": "generate", "/init_transfer": "init_transfer",
              "/update_weights": "update_weights", "/load_adapter": "load_adapter",
              "/close_transfer": "close_transfer"}

    def handle(self, path: str, req: dict) -> tuple[int, dict]:
        name = self.ROUTES.get(path)
        if name is None:
            return 404, {"error": f"no endpoint {path}; expected one of {sorted(self.ROUTES)}"}
        try:
            if name == "health":  # never waits behind a long push
                return 200, self.health(req)
            with self.lock:
                return 200, getattr(self, name)(req)
        except (KeyError, ValueError, TypeError) as e:
            return 400, {"error": f"{path}: {type(e).__name__}: {e}"}
        except Exception as e:  # the engine failed: tell the trainer, keep serving
            return 500, {"error": f"{path}: {type(e).__name__}: {e}"}


def make_http_server(service: RolloutService, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            self._reply(*service.handle(self.path, {}))

        def do_POST(self):  # noqa: N802
            try:
                n = int(self.headers.get("Content-Length", 0))
                req = json.loads(self.rfile.read(n) or b"{}")
            except ValueError as e:
                return self._reply(400, {"error": f"request body is not JSON: {e}"})
            self._reply(*service.handle(self.path, req))

        def log_message(self, fmt, *args):  # one line per request is noise at 1 step/s
            pass

    return ThreadingHTTPServer((host, port), Handler)


def build_service(args) -> RolloutService:
    """The engine `rlreason serve` was asked for, loaded from args.model."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(args.model)
        tie = bool(getattr(AutoConfig.from_pretrained(args.model), "tie_word_embeddings", False))
    except (OSError, ValueError) as e:
        raise ValueError(f"--model {args.model!r}: cannot load it ({e}); give a local folder with "
                         "config.json, weights and tokenizer files, or a hub id reachable from here") from e
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if args.backend == "vllm":
        from .vllm import VLLMEngine

        engine = VLLMEngine(args.model, tok, seed=args.seed, max_model_len=args.max_model_len,
                            gpu_memory_utilization=args.gpu_memory_utilization, dtype=args.dtype,
                            enable_lora=args.enable_lora, max_lora_rank=args.max_lora_rank,
                            tensor_parallel_size=args.tensor_parallel_size)
    else:
        from ..config import ModelConfig
        from ..models import load_causal_lm
        from .hf import HFEngine

        model = load_causal_lm(args.model, ModelConfig(name_or_path=args.model, dtype=args.dtype)).to(device)
        engine = HFEngine(model, tok, seed=args.seed, shares_module=False)  # LoRA: wrapped at the first push
    return RolloutService(engine, model=args.model, backend=args.backend, device=device,
                          tie_word_embeddings=tie)


def serve(args) -> None:
    service = build_service(args)
    server = make_http_server(service, args.host, args.port)
    print(f"rlreason serve: {args.backend} engine on {args.model}, listening on "
          f"http://{args.host}:{server.server_address[1]} (transfer: {service.transfer_backend})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
