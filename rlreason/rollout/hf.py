"""Transformers rollout backend: a lean sampling loop over the model's KV cache.

Why not `model.generate`: at the sizes that run on a CPU, per-token Python overhead
dominates, and `generate` spends it on logits processors, stopping criteria and output
bookkeeping we do not need. This loop does one forward per token on the whole batch,
samples with a torch.Generator we own (so a checkpoint can save and restore it), records
each sampled token's log-probability, and stops as soon as every row has finished.

Colocated in-process: the engine holds the trainer's own module, so its weights are
always the latest and `update_weights` is a copy only when a caller hands it others.
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any

import torch
from safetensors.torch import load_file
from transformers.cache_utils import DynamicCache

from ..types import Completion, SamplingParams
from . import static_cache
from .kv_buffers import KEEP_MAX_BYTES


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                  generator: torch.Generator | None,
                  banned: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row. logits [B,V] -> (tokens [B], logprobs [B]).

    The log-probability is under the tempered distribution, after `banned` token ids
    (stops under a minimum length) are excluded and before top-p filtering: what vLLM
    reports as processed log-probs (logits processors such as min_tokens applied, top-p
    not), so the importance weights see the minimum length as the sampler/trainer
    difference it is.
    """
    if banned is not None:
        logits = logits.index_fill(-1, banned, float("-inf"))
    if temperature == 0:
        return logits.argmax(-1), torch.zeros(logits.size(0), device=logits.device)
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    probs = logp.exp()
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set with mass >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    # exponential race: argmax p_i / E_i with E_i ~ Exp(1) draws i with probability p_i;
    # one fused pass where torch.multinomial costs several small kernels per row
    noise = torch.empty_like(probs).exponential_(generator=generator)
    tokens = (probs / noise).argmax(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


@contextmanager
def eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class HFEngine:
    """`shares_module`: True when `model` is the trainer's own module (nothing to push);
    False for an inference copy (sharded training), refreshed through `update_weights`."""

    def __init__(self, model, tokenizer, *, batch_size: int = 256, seed: int = 0,
                 static_cache: bool = True, shares_module: bool = True):
        self.model = model
        self.shares_module = shares_module
        self.static_cache = static_cache
        self.compact_at = 0.75  # shrink the KV cache once a quarter of its rows finished
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = sorted({i for i in eos + [tokenizer.eos_token_id] if i is not None})
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self._kv_buffers = None  # the static-cache decode's K/V storage, reused on CPU

    # ------------------------------------------------------------ protocol
    def generate(self, prompt_token_ids: list[list[int]], n: int,
                 sampling: SamplingParams) -> list[list[Completion]]:
        if sampling.seed is not None:
            self.generator.manual_seed(sampling.seed)
        flat = [list(p) for p in prompt_token_ids for _ in range(n)]
        done: list[Completion] = []
        with eval_mode(self.model), torch.inference_mode():
            for i in range(0, len(flat), self.batch_size):
                done.extend(self._decode(flat[i : i + self.batch_size], sampling))
        return [done[i * n : (i + 1) * n] for i in range(len(prompt_token_ids))]

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in params:
                    raise KeyError(f"update_weights: the engine's model has no parameter {name!r}")
                params[name].copy_(tensor)

    def load_adapter(self, adapter: Any) -> None:
        """A peft adapter folder, an `Adapter`, or its tensors (peft's saved names). A plain
        model is wrapped with the adapter's own config at the first one (a rollout server
        starts from the base model and learns the adapter's shape from the trainer)."""
        from peft import PeftModel, set_peft_model_state_dict  # lazily: peft is heavy, needed only for LoRA

        if not isinstance(self.model, PeftModel):
            if hasattr(adapter, "config"):
                from peft import get_peft_model  # lazily: as above

                self.model = get_peft_model(self.model, adapter.config)
            elif isinstance(adapter, str):
                self.model = PeftModel.from_pretrained(self.model, adapter)
                return
            else:
                raise ValueError("load_adapter: a plain model needs a peft folder or an Adapter (with its config)")
        if isinstance(adapter, str):
            adapter = load_file(f"{adapter}/adapter_model.safetensors")
        tensors = getattr(adapter, "tensors", adapter)
        result = set_peft_model_state_dict(self.model, dict(tensors))
        if getattr(result, "unexpected_keys", None):
            raise KeyError(f"load_adapter: the engine's model has no LoRA weights {result.unexpected_keys[:3]}")

    def sleep(self) -> None:
        """The module is the trainer's own: only the decode's K/V storage to free, and small
        storage is kept for the next rollout (kv_buffers.KEEP_MAX_BYTES)."""
        if self._kv_buffers is not None and self._kv_buffers.nbytes > KEEP_MAX_BYTES:
            self._kv_buffers = None

    def wake(self) -> None:
        pass

    def rng_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    # ------------------------------------------------------------ decoding
    def _stepper(self, ids, mask, pos, max_len: int):
        """(last prompt logits, step(tokens, positions) -> logits, keep_rows or None).

        keep_rows(indices) drops finished rows from the KV cache; only the static-cache
        path supports it (re-indexing transformers' cache objects costs more than it saves).
        """
        if self.static_cache and static_cache.supports(self.model, max_len):
            # a prompt's G samples share its prefill: each distinct prompt is run once and
            # its K/V rows copied to its samples (vLLM shares the cached blocks instead)
            B, P = ids.shape
            uniq, copies = torch.unique(torch.cat([ids, mask, pos], dim=1), dim=0, return_inverse=True)
            shared = uniq.size(0) < B
            if shared:
                ids, mask, pos = uniq.split(P, dim=1)
            spec = static_cache.StaticCacheDecoder.kv_spec(self.model, ids.size(0), max_len, B)
            if self._kv_buffers is not None and not self._kv_buffers.fits(*spec):
                self._kv_buffers = None  # freed before the decoder allocates a new pair
            dec = static_cache.StaticCacheDecoder(self.model, ids.size(0), max_len, rows_hint=B,
                                                  buffers=self._kv_buffers)
            if self.device.type == "cpu":  # kept for the next rollout (kv_buffers.py); on GPUs
                self._kv_buffers = dec.buffers  # the caching allocator reuses memory already
            first = dec.forward(ids, pos, mask.bool())
            if shared:
                dec.keep_rows(copies)
                first = first[copies]
            step = lambda tok, p: dec.forward(  # noqa: E731
                tok[:, None], p, torch.ones_like(tok, dtype=torch.bool)[:, None])
            return first, step, dec.keep_rows

        state = {"mask": mask}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                         past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
        state["cache"] = out.past_key_values

        def step(tok, p):
            m = state["mask"]
            state["mask"] = torch.cat([m, m.new_ones((m.size(0), 1))], dim=1)
            o = self.model(input_ids=tok[:, None], attention_mask=state["mask"], position_ids=p,
                           past_key_values=state["cache"], use_cache=True)
            state["cache"] = o.past_key_values
            return o.logits[:, -1]

        return out.logits[:, -1], step, None

    def _text_stops(self, out_tok, lengths, finished, stops: tuple[str, ...]) -> list[int]:
        """Rows (not finished) whose completion text ends inside a stop string this step.
        Only the tail is decoded: enough tokens to hold the longest stop string plus the
        newest token (a token is at least one character), so a string that appeared
        earlier was caught then."""
        window = max(len(s) for s in stops) + 1
        hits = []
        for i in (~finished).nonzero().squeeze(-1).tolist():
            n = int(lengths[i])
            tail = self.tokenizer.decode(out_tok[i, max(0, n - window) : n].tolist(), skip_special_tokens=True)
            if any(s in tail for s in stops):
                hits.append(i)
        return hits

    def _decode(self, prompts: list[list[int]], sp: SamplingParams) -> list[Completion]:
        B, P, dev = len(prompts), max(len(p) for p in prompts), self.device
        ids = torch.full((B, P), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, P), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every row's next token is column P
            ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, P - len(p) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        stop = torch.tensor(self.eos_ids + list(sp.stop_token_ids), device=dev)
        out_tok = torch.full((B, sp.max_tokens), self.pad_id, dtype=torch.long, device=dev)
        out_lp = torch.zeros((B, sp.max_tokens), device=dev)
        finished = torch.zeros(B, dtype=torch.bool, device=dev)
        lengths = torch.zeros(B, dtype=torch.long, device=dev)
        logits, step, keep_rows = self._stepper(ids, mask, pos, P + sp.max_tokens)
        pos = pos[:, -1:]
        rows = torch.arange(B, device=dev)  # rows of the batch still in the KV cache
        stopped_by_text: set[int] = set()
        for t in range(sp.max_tokens):
            # every row is sampled (finished ones too, then masked), so the generator's
            # stream does not depend on when rows leave the cache
            early = t < sp.min_tokens  # rows alive now have t tokens: no stop may end them
            tok, lp = sample_tokens(logits, sp.temperature, sp.top_p, self.generator,
                                    banned=stop if early else None)
            tok = tok.masked_fill(finished, self.pad_id)
            out_tok[:, t], out_lp[:, t] = tok, lp.masked_fill(finished, 0.0)
            lengths += (~finished).long()
            if sp.stop and not early:  # rows whose text now holds a stop string end here
                for i in self._text_stops(out_tok, lengths, finished, sp.stop):
                    finished[i] = True
                    stopped_by_text.add(i)
            finished |= torch.isin(tok, stop)
            if t + 1 == sp.max_tokens or bool(finished.all()):
                break
            pos = pos + 1
            alive = ~finished[rows]
            if keep_rows is not None and int(alive.sum()) <= self.compact_at * rows.numel():
                keep_rows(alive.nonzero().squeeze(-1))  # shrink the batch: less compute
                rows = rows[alive]
            if rows.numel() == B:
                logits = step(tok, pos)
            else:
                logits = logits.new_zeros(B, logits.size(-1))
                logits[rows] = step(tok[rows], pos[rows]).to(logits.dtype)
        toks, lps, lens = out_tok.tolist(), out_lp.tolist(), lengths.tolist()
        stop_set = set(stop.tolist())
        result = []
        for i in range(B):
            t_ids = toks[i][: lens[i]]
            reason = "stop" if t_ids and (t_ids[-1] in stop_set or i in stopped_by_text) else "length"
            result.append(Completion(prompt_token_ids=prompts[i], token_ids=t_ids,
                                     logprobs=lps[i][: lens[i]], finish_reason=reason))
        return result


def from_config(cfg, ctx) -> HFEngine:
    """`rollout.backend: hf` (registry.BACKENDS): transformers' generate in this process."""
    return HFEngine(ctx.model, ctx.tokenizer, batch_size=cfg.batch_size, seed=ctx.seed,
                    shares_module=ctx.shares_module)
