"""The rollout server behind `rlreason serve` (its entry point, which loads the model, is the
command layer's serve.py): a rollout engine on dedicated GPUs, for trainers elsewhere.

For users who split generation and training across GPUs or nodes: one server holds a vLLM
engine (or the transformers one, which is how this is tested on CPUs); trainers send
prompt token ids over HTTP and get completions with their log-probs back, exactly the
RolloutEngine contract; the trainer pushes new weights or a LoRA adapter after every
optimizer step through a process group of their own (NCCL between GPUs, gloo on CPUs;
see transfer.py): metadata over HTTP, tensors by broadcast, never through disk.

Why the standard library's HTTP server: the payloads are a few JSON lists per step and
calls are serialised on one engine anyway; a web framework would add a dependency and
nothing the trainer uses. Engine calls run one at a time under a lock, so a weight push
and a generation never interleave; /health and the connecting part of /init_transfer run
outside it, so neither waits behind the other.

Security defaults, because this server takes weights from whoever calls it and dials out
on request: it binds to 127.0.0.1 unless told otherwise, and refuses a non-loopback --host
without an API key (--api-key or RLREASON_API_KEY; every endpoint but GET /health then
needs `Authorization: Bearer <key>`). Request bodies are capped (--max-request-mb) and every
socket read or write times out (--request-timeout-s), so a slow or oversized client costs
one thread for a bounded time and never blocks the others. /init_transfer dials only the
caller's own address or hosts allowed with --transfer-allow, so the server cannot be
pointed at other machines. Prompt token ids are checked against the vocabulary before they
reach the engine.
"""
from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from . import transfer
from .wire import completion_to_json, sampling_from_json

API_KEY_ENV = "RLREASON_API_KEY"
MAX_TRANSFER_TIMEOUT_S = 300.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a hostname: it may resolve anywhere
        return False


def resolve_api_key(host: str, api_key: str | None) -> str | None:
    """--api-key, else RLREASON_API_KEY; required unless only this machine can connect."""
    key = api_key or os.environ.get(API_KEY_ENV) or None
    if key is None and not is_loopback(host):
        raise ValueError(f"--host {host}: serving beyond this machine needs an API key; pass "
                         f"--api-key KEY or set {API_KEY_ENV} (trainers set rollout.server_api_key)")
    return key


def check_prompts(prompts: Any, vocab_size: int) -> None:
    if not isinstance(prompts, list) or not all(isinstance(p, list) and p for p in prompts):
        raise ValueError("prompt_token_ids: expected a list of non-empty lists of token ids")
    for t in (t for p in prompts for t in p):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
            raise ValueError(f"prompt_token_ids: {t!r} is not a token id of this model "
                             f"(expected an int in [0, {vocab_size}), the vocab size)")


class Forbidden(Exception):
    """A request the server's settings do not allow (HTTP 403)."""


class RolloutService:
    """The server's state: one engine, the transfer group, chunks of a push in flight."""

    def __init__(self, engine, *, model: str, backend: str, device: torch.device,
                 tie_word_embeddings: bool, vocab_size: int, transfer_allow: tuple[str, ...] = (),
                 max_request_bytes: int = 8 << 20):
        self.engine, self.model, self.backend, self.device = engine, model, backend, device
        self.vocab_size, self.max_request_bytes = vocab_size, max_request_bytes
        self.transfer_allow = tuple(transfer_allow)  # hosts /init_transfer may dial besides the caller
        self.transfer_backend = "nccl" if device.type == "cuda" else "gloo"
        self.tie_word_embeddings = tie_word_embeddings
        self.group = None
        self.pending: list[tuple[str, torch.Tensor]] = []
        self.lock = threading.Lock()
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.adapter_dir = tempfile.mkdtemp(prefix="rlreason-served-lora-", dir=shm)
        self.pushes = 0
        self.requests = 0  # generate calls served
        self.version: int | None = None  # the trainer step of the weights applied last, if told

    def health(self, req: dict, peer: str) -> dict:
        return {"ok": True, "model": self.model, "backend": self.backend,
                "transfer_backend": self.transfer_backend, "pushes": self.pushes, "requests": self.requests,
                "tie_word_embeddings": self.tie_word_embeddings, "max_request_bytes": self.max_request_bytes}

    def generate(self, req: dict, peer: str) -> dict:
        prompts, n = req["prompt_token_ids"], req.get("n", 1)
        check_prompts(prompts, self.vocab_size)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: {n!r}; expected an int >= 1 (completions per prompt)")
        groups = self.engine.generate(prompts, n, sampling_from_json(req.get("sampling", {})))
        self.requests += 1
        # under the lock: no push lands during the request, so one version holds for all of it
        return {"completions": [[completion_to_json(c) for c in g] for g in groups], "policy_version": self.version}

    def check_transfer_host(self, host: str, peer: str) -> None:
        """Dial back only the caller, or a host the operator allowed: never whatever a
        request names (that would make the server a probe into its own network)."""
        if host != peer and host not in self.transfer_allow:
            raise Forbidden(f"/init_transfer: host {host!r} is not the caller ({peer}); start "
                            f"the server with --transfer-allow {host} to allow it")

    def init_transfer(self, req: dict, peer: str) -> dict:
        """Runs without the lock: connecting blocks until the trainer joins (up to timeout_s);
        the new group replaces the old one under the lock, between engine calls."""
        host, timeout_s = str(req["host"]), float(req.get("timeout_s", MAX_TRANSFER_TIMEOUT_S))
        self.check_transfer_host(host, peer)
        if not 0 < timeout_s <= MAX_TRANSFER_TIMEOUT_S:
            raise ValueError(f"timeout_s: {timeout_s}; expected 0 < timeout_s <= {MAX_TRANSFER_TIMEOUT_S:.0f}")
        group = transfer.open_group(host, int(req["port"]), 1, int(req.get("world_size", 2)),
                                    self.transfer_backend, timeout_s=timeout_s)
        with self.lock:
            self.group, self.pending = group, []  # the old group is released with its object
        return {"ok": True}

    def _receive(self, meta: list) -> list[tuple[str, torch.Tensor]]:
        if self.group is None:
            raise ValueError("no transfer group: POST /init_transfer first")
        return transfer.receive_tensors(self.group, meta, self.device)

    def update_weights(self, req: dict, peer: str) -> dict:
        self.pending.extend(self._receive(req["meta"]))
        if req.get("final", True):
            weights, self.pending = self.pending, []
            self.engine.update_weights(weights)
            self.pushes += 1
            self.version = req.get("version")
        return {"ok": True, "received": len(req["meta"])}

    def load_adapter(self, req: dict, peer: str) -> dict:
        tensors = dict(self._receive(req["meta"]))
        folder = Path(self.adapter_dir)
        (folder / "adapter_config.json").write_text(req["config"])
        save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
        self.engine.load_adapter(str(folder))
        self.pushes += 1
        self.version = req.get("version")
        return {"ok": True, "received": len(tensors)}

    def close_transfer(self, req: dict, peer: str) -> dict:
        self.group = None  # the group and its store are released with the object
        return {"ok": True}

    ROUTES = {"/health": "health", "/generate": "generate", "/init_transfer": "init_transfer",
              "/update_weights": "update_weights", "/load_adapter": "load_adapter",
              "/close_transfer": "close_transfer"}

    UNLOCKED = {"health", "init_transfer"}  # never wait behind a long push; they lock themselves

    def handle(self, path: str, req: dict, peer: str) -> tuple[int, dict]:
        """(status, reply) for a request from the address `peer`."""
        name = self.ROUTES.get(path)
        if name is None:
            return 404, {"error": f"no endpoint {path}; expected one of {sorted(self.ROUTES)}"}
        if not isinstance(req, dict):
            return 400, {"error": f"{path}: expected a JSON object, got {type(req).__name__}"}
        try:
            if name in self.UNLOCKED:
                return 200, getattr(self, name)(req, peer)
            with self.lock:
                return 200, getattr(self, name)(req, peer)
        except Forbidden as e:
            return 403, {"error": str(e)}
        except (KeyError, ValueError, TypeError) as e:
            return 400, {"error": f"{path}: {type(e).__name__}: {e}"}
        except Exception as e:  # the engine failed: tell the trainer, keep serving
            return 500, {"error": f"{path}: {type(e).__name__}: {e}"}


def make_http_server(service: RolloutService, host: str, port: int, *, api_key: str | None = None,
                     request_timeout_s: float = 30.0) -> ThreadingHTTPServer:
    """One thread per connection (daemon threads: ThreadingHTTPServer's default)."""
    max_request_bytes = service.max_request_bytes
    expected = None if api_key is None else f"Bearer {api_key}".encode()

    class Handler(BaseHTTPRequestHandler):
        # every socket read and write: a client that stalls mid-request is dropped after
        # this long; handlers blocked in a transfer collective are not reading, so unaffected
        timeout = request_timeout_s

        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            """True, or False after replying 401."""
            if expected is None or (self.command == "GET" and self.path == "/health"):
                return True
            if hmac.compare_digest(self.headers.get("Authorization", "").encode(), expected):
                return True
            self._reply(401, {"error": f"{self.path}: missing or wrong API key; send `Authorization: Bearer "
                                       f"<key>` with the server's --api-key / {API_KEY_ENV} (trainers: "
                                       "rollout.server_api_key)"})
            return False

        def _body(self) -> dict | None:
            """The JSON body, or None after replying 400 or 413 (without reading an oversized one)."""
            raw = self.headers.get("Content-Length", "0").strip()
            if not (raw.isascii() and raw.isdigit()):
                self._reply(400, {"error": f"Content-Length {raw!r}: expected a non-negative integer"})
                return None
            if int(raw) > max_request_bytes:
                self.close_connection = True  # the body stays unread
                self._reply(413, {"error": f"request body of {int(raw)} bytes is over the server's limit of "
                                           f"{max_request_bytes} (--max-request-mb)"})
                return None
            try:
                return json.loads(self.rfile.read(int(raw)) or b"{}")
            except ValueError as e:
                self._reply(400, {"error": f"request body is not JSON: {e}"})
                return None

        def do_GET(self):  # noqa: N802
            if self._authorized():
                self._reply(*service.handle(self.path, {}, self.client_address[0]))

        def do_POST(self):  # noqa: N802
            if not self._authorized():
                return
            req = self._body()
            if req is not None:
                self._reply(*service.handle(self.path, req, self.client_address[0]))

        def log_message(self, fmt, *args):  # one line per request is noise at 1 step/s
            pass

    return ThreadingHTTPServer((host, port), Handler)


@contextlib.contextmanager
def spawned(model: str, *args: str, backend: str = "hf", env: dict[str, str] | None = None,
            timeout_s: float = 180.0, cpus: set[int] | None = None, log: Path | None = None) -> Iterator[str]:
    """`rlreason serve --model MODEL --backend BACKEND ARGS...` in a subprocess on a free
    loopback port, pinned to `cpus` if given, its output in `log` (a temporary file if not:
    a pipe nobody reads would stall a chatty server); yields its URL once /health answers
    and stops it afterwards. A server that exits or stays silent for `timeout_s` raises
    RuntimeError with the end of its output. For tests, benchmarks and checks that need a
    real server beside them."""
    port = transfer.free_port("127.0.0.1")
    with contextlib.ExitStack() as stack:
        if log is None:
            log = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rlreason-serve-"))) / "serve.log"
        out = stack.enter_context(open(log, "w"))
        proc = subprocess.Popen([sys.executable, "-m", "rlreason", "serve", "--model", str(model), "--backend", backend,
                                 "--host", "127.0.0.1", "--port", str(port), *args],
                                env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
        try:
            if cpus is not None:
                os.sched_setaffinity(proc.pid, cpus)
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    urllib.request.urlopen(url + "/health", timeout=2).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        out.flush()
                        why = (f"exited {proc.returncode}" if proc.poll() is not None
                               else f"silent for {timeout_s:.0f} s")
                        raise RuntimeError(f"rlreason serve {why}: {log.read_text()[-3000:]}") from None
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
