"""A lean decode step for Llama-family models over a preallocated KV cache.

Why our own: for the small models that run on CPUs, a decode step is a handful of small
matmuls and transformers' per-step machinery (cache objects, mask builders, output
dataclasses, kwargs plumbing through every module) costs more than the arithmetic. This
step calls the model's own submodules (embeddings, norms, q/k/v/o projections, MLPs,
rotary embedding, lm_head), so weights, biases and peft LoRA layers are used exactly as
the model defines them; only cache handling and masking are ours. Supported:
Llama, Qwen2, Qwen3, Mistral (no sliding window); anything else falls back to the
transformers forward. Tests check the logits against the transformers forward.

Small float32 models with plain linear layers (or LoRA on them, folded into the copy)
decode through `FusedLayers`: copies of the
weights rearranged, per rollout, so that a layer is about 20 kernels instead of 40 (the
profile of a 4-layer, hidden-256 model on 2 cores: a decode step cost ~1.1 ms whatever
the batch, most of it per-kernel overhead). See its docstring for the rearrangement.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .kv_buffers import COLUMN_ROUND, KVBuffers
from .packed_linear import PackedLinear

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports(model, max_len: int) -> bool:
    base = _base(model)
    cfg = getattr(base, "config", None)
    if getattr(cfg, "model_type", None) not in SUPPORTED:
        return False
    inner = getattr(base, "model", None)
    if not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return False
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and window < max_len:
        return False
    return True


def _rms(norm, x: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm as one fused op (float32); other dtypes use the module itself,
    which upcasts to float32 the way the model defines."""
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None or x.dtype != torch.float32:
        return norm(x)
    return F.rms_norm(x, (x.size(-1),), norm.weight, eps)


def _lin(mod, x: torch.Tensor) -> torch.Tensor:
    """A plain nn.Linear as F.linear (skips Module.__call__ bookkeeping, ~4 us a call, which
    adds up over 9 calls per layer per token); anything else (peft LoRA layers) as itself."""
    if type(mod) is torch.nn.Linear:
        return F.linear(x, mod.weight, mod.bias)
    return mod(x)


def _mlp(mlp, x: torch.Tensor) -> torch.Tensor:
    if all(hasattr(mlp, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return _lin(mlp.down_proj, mlp.act_fn(_lin(mlp.gate_proj, x)) * _lin(mlp.up_proj, x))
    return mlp(x)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the half-split layout of Llama-family models; x [B, H, L, D]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


FUSE_MAX_BYTES = 256 << 20  # beyond this, matmuls dominate and copying the weights costs more


def _linear_parts(mod) -> tuple[torch.nn.Linear, list[str]] | None:
    """(base nn.Linear, active LoRA adapters to add) of a layer that applies one linear
    map: a plain nn.Linear, or a peft LoRA layer on one; None for anything else (DoRA and
    other variants, LoRA biases, disabled adapters)."""
    if type(mod) is torch.nn.Linear:
        return mod, []
    base = getattr(mod, "base_layer", None)
    if type(base) is not torch.nn.Linear or not hasattr(mod, "get_delta_weight"):
        return None
    if getattr(mod, "merged", False):  # the adapters are in the base weight already
        return base, []
    if getattr(mod, "disable_adapters", False):
        return None
    active = [a for a in mod.active_adapters if a in getattr(mod, "lora_A", {})]
    if any(getattr(mod, "lora_variant", {}).get(a) or getattr(mod, "lora_bias", {}).get(a) for a in active):
        return None
    return base, active


def _effective_linear(mod) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of a layer `_linear_parts` accepts: LoRA's scaled B A added to the
    base weight, so the adapter costs no matmul of its own while decoding."""
    base, adapters = _linear_parts(mod)
    weight = base.weight
    for a in adapters:
        weight = weight + mod.get_delta_weight(a)
    return weight, base.bias


def _unit_rms(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) in four kernels (the norm's weight is folded into the next
    matmul); F.rms_norm costs about nine on CPU."""
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x * torch.addcmul(eps, n, n, value=1.0 / x.size(-1)).rsqrt_()


def _fused_mlp(f: dict, h: torch.Tensor) -> torch.Tensor:
    """A fused layer's MLP block with its residual: h + down(silu(gate) * up) of the normed h."""
    gu = f["gate_up"](_unit_rms(h, f["eps_post"]))
    n = f["inter"]
    return f["down"](F.silu(gu[:, :n]) * gu[:, n:], residual=h)


class FusedLayers:
    """A model's decoder layers rearranged for decoding with few kernels; built from the
    current weights at the start of every rollout (weights change every step).

    * Each RMSNorm weight is folded into the matmul that follows it (W' = W diag(w)).
    * q, k and v are one matmul. Within each q and k head the output rows are reordered
      (0, D/2, 1, D/2+1, ...), which turns the half-split rotary embedding into one complex
      multiply; q.k is unchanged since q and k get the same order (v keeps its own).
    * gate and up are one matmul; the residual adds ride on the o and down matmuls.
    * Large weights are packed for oneDNN once (packed_linear.py), for `rows_hint` rows.
    """

    @torch.no_grad()  # a per-rollout copy of the weights, not part of any graph
    def __init__(self, base, head_dim: int, cos: torch.Tensor, sin: torch.Tensor, rows_hint: int | None = None):
        inner, cfg, D = base.model, base.config, head_dim
        nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.nq, self.nkv, self.D = nq, nkv, D
        nqk = (nq + nkv) * D

        def pairs(t: torch.Tensor, n: int) -> torch.Tensor:
            """View of t [n*D, ...] with each head's rows in the order (0, D/2, 1, D/2+1, ...)."""
            return t.reshape(n, 2, D // 2, *t.shape[1:]).transpose(1, 2)

        # each fused weight is written once, reordered and scaled in one pass (was index,
        # cat, mul: 10.6 -> 5.8 ms a rollout at hidden 256, 4 layers, before packing; same values)
        self.layers = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            (wq, bq), (wk, bk), (wv, bv), (wo, _) = (_effective_linear(x) for x in (
                a.q_proj, a.k_proj, a.v_proj, a.o_proj))
            (wg, _), (wu, _), (wd, _) = (_effective_linear(x) for x in (m.gate_proj, m.up_proj, m.down_proj))
            w_in, hid = layer.input_layernorm.weight, wq.size(1)
            qkv = wq.new_empty(nqk + wv.size(0), hid)
            torch.mul(pairs(wq, nq), w_in, out=qkv[: nq * D].view(nq, D // 2, 2, hid))
            torch.mul(pairs(wk, nkv), w_in, out=qkv[nq * D : nqk].view(nkv, D // 2, 2, hid))
            torch.mul(wv, w_in, out=qkv[nqk:])
            bias = None
            if bq is not None:
                bias = torch.cat([pairs(bq, nq).reshape(-1), pairs(bk, nkv).reshape(-1), bv])
            gate_up = wg.new_empty(2 * wg.size(0), hid)
            torch.mul(wg, layer.post_attention_layernorm.weight, out=gate_up[: wg.size(0)])
            torch.mul(wu, layer.post_attention_layernorm.weight, out=gate_up[wg.size(0) :])
            self.layers.append(dict(
                qkv=PackedLinear(qkv, bias, rows_hint), o=PackedLinear(wo, None, rows_hint),
                gate_up=PackedLinear(gate_up, None, rows_hint),
                inter=wg.size(0), down=PackedLinear(wd, None, rows_hint),
                eps_in=torch.tensor(layer.input_layernorm.variance_epsilon, device=cos.device),
                eps_post=torch.tensor(layer.post_attention_layernorm.variance_epsilon, device=cos.device),
                scaling=a.scaling))
        self.lm_head = PackedLinear(_effective_linear(base.lm_head)[0] * inner.norm.weight, None, rows_hint)
        self.eps_final = torch.tensor(inner.norm.variance_epsilon, device=cos.device)
        self.freqs = torch.complex(cos[:, : D // 2], sin[:, : D // 2])  # [max_len, D/2]

    @staticmethod
    def eligible(base, cos: torch.Tensor) -> bool:
        inner = base.model
        D = cos.size(-1)

        def linear(m, bias_ok: bool = True) -> bool:
            parts = _linear_parts(m)
            return parts is not None and (bias_ok or parts[0].bias is None)

        if next(base.parameters()).dtype != torch.float32 or not linear(base.lm_head, bias_ok=False):
            return False
        if getattr(base.config, "hidden_act", None) not in ("silu", "swish"):
            return False
        if sum(p.numel() * p.element_size() for p in base.parameters()) > FUSE_MAX_BYTES:
            return False
        if not torch.equal(cos[:, : D // 2], cos[:, D // 2 :]) or not hasattr(inner.norm, "variance_epsilon"):
            return False
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            qkv = [getattr(a, n, None) for n in ("q_proj", "k_proj", "v_proj")]
            rest = [getattr(a, "o_proj", None)] + [getattr(m, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
            if not all(linear(x) for x in qkv) or not all(linear(x, bias_ok=False) for x in rest):
                return False
            if hasattr(a, "q_norm"):
                return False
            if not all(hasattr(n, "variance_epsilon") for n in (layer.input_layernorm,
                                                                 layer.post_attention_layernorm)):
                return False
        return True

    def run(self, dec: StaticCacheDecoder, h: torch.Tensor, pos: torch.Tensor, c0: int, c1: int,
            mask, bias) -> torch.Tensor:
        """h [B, L, hidden] -> the last position's logits [B, V]; fills dec's K/V cache."""
        B, L, hid = h.shape
        nq, nkv, D = self.nq, self.nkv, self.D
        nqk = (nq + nkv) * D
        fr = self.freqs[pos].unsqueeze(2)  # [B, L, 1, D/2]
        h = h.reshape(B * L, hid)
        for i, f in enumerate(self.layers):
            qkv = f["qkv"](_unit_rms(h, f["eps_in"])).view(B, L, -1)
            pairs = torch.view_as_complex(qkv[..., :nqk].unflatten(-1, (nq + nkv, D // 2, 2)))
            qk = torch.view_as_real(pairs * fr).flatten(-2)  # rotated q and k: [B, L, nq+nkv, D]
            v = qkv[..., nqk:].unflatten(-1, (nkv, D)).transpose(1, 2)
            o = dec.attend_layer(i, qk[:, :, :nq].transpose(1, 2), qk[:, :, nq:].transpose(1, 2), v,
                                 c0, c1, mask, bias, f["scaling"])
            h = f["o"](o.transpose(1, 2).reshape(B * L, -1), residual=h)
            h = _fused_mlp(f, h)
        last = h.view(B, L, hid)[:, -1]
        return self.lm_head(_unit_rms(last, self.eps_final))

    def step(self, dec: StaticCacheDecoder, h: torch.Tensor, pos: torch.Tensor, c0: int,
             bias: torch.Tensor) -> torch.Tensor:
        """`run` for one decode position (L = 1, no grouped KV heads): the same kernels on the
        same values, with fewer view ops and Python calls between them, which at these sizes
        are a good part of a step. h [B, 1, hidden] -> logits [B, V]."""
        B = h.size(0)
        nq, nkv, D = self.nq, self.nkv, self.D
        nqk, c1 = (nq + nkv) * D, c0 + 1
        fr = self.freqs[pos.view(-1)].unsqueeze(1)  # [B, 1, D/2]
        h = h.view(B, -1)
        for K, V, f in zip(dec.k, dec.v, self.layers):
            qkv = f["qkv"](_unit_rms(h, f["eps_in"]))  # [B, (nq + 2 nkv) D]
            pairs = torch.view_as_complex(qkv[:, :nqk].view(B, nq + nkv, D // 2, 2))
            qk = torch.view_as_real(pairs * fr).view(B, nq + nkv, D)  # rotated q and k
            K[:, :, c0] = qk[:, nq:]
            V[:, :, c0] = qkv[:, nqk:].view(B, nkv, D)
            scores = torch.baddbmm(bias, qk[:, :nq].reshape(B * nq, 1, D),
                                   K[:, :, :c1].flatten(0, 1).transpose(1, 2), alpha=f["scaling"])
            o = torch.bmm(torch.softmax(scores, dim=-1), V[:, :, :c1].flatten(0, 1))  # [B nq, 1, D]
            h = f["o"](o.view(B, nq * D), residual=h)
            h = _fused_mlp(f, h)
        return self.lm_head(_unit_rms(h, self.eps_final))


class StaticCacheDecoder:
    """Holds K/V of every layer as [B, kv_heads, max_len, head_dim] buffers.

    Rows are left-padded, so all rows write the same cache column at each step; `valid`
    [B, max_len] marks which columns hold real (non-padding) tokens.
    """

    def __init__(self, model, batch: int, max_len: int, rows_hint: int | None = None,
                 buffers: KVBuffers | None = None):
        """`rows_hint`: the rows a decode step will have (default `batch`; a shared prefill
        runs fewer), for packing and the cache's size. `buffers`: K/V storage of an earlier
        rollout, used again if it has the size this one needs (see `self.buffers`)."""
        base = _base(model)
        self.inner, self.lm_head = base.model, base.lm_head
        first = self.inner.layers[0].self_attn
        self.head_dim = first.head_dim
        self.heads = base.config.num_attention_heads
        p = next(base.parameters())
        spec = self.kv_spec(model, batch, max_len, rows_hint)
        kv, max_len = spec[1][1], spec[1][2]
        if buffers is None or not buffers.fits(*spec):
            buffers = KVBuffers(*spec)
        # every column a step reads was written before by this rollout, so no zeroing
        self.buffers = buffers
        self.k, self.v = buffers.views(batch)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=p.device)
        self.gqa = kv != self.heads
        self.col = 0
        self.bias: torch.Tensor | None = None  # decode's additive mask [B*H, 1, max_len]
        # cos/sin for every position, computed once: a table lookup per step instead of
        # the rotary module's half-dozen ops
        all_pos = torch.arange(max_len, device=p.device)[None]
        cos, sin = self.inner.rotary_emb(torch.zeros(1, dtype=p.dtype, device=p.device), all_pos)
        self.cos, self.sin = cos[0], sin[0]  # [max_len, head_dim]
        self.fused = FusedLayers(base, self.head_dim, self.cos, self.sin, rows_hint or batch) \
            if FusedLayers.eligible(base, self.cos) else None

    @staticmethod
    def kv_spec(model, batch: int, max_len: int, rows_hint: int | None = None):
        """(layers, [rows, kv_heads, max_len rounded up, head_dim], dtype, device): the K/V
        storage a decoder of these arguments needs (KVBuffers' arguments)."""
        base = _base(model)
        p, cfg = next(base.parameters()), base.config
        shape = (max(batch, rows_hint or 0), cfg.num_key_value_heads,
                 -(-max_len // COLUMN_ROUND) * COLUMN_ROUND, base.model.layers[0].self_attn.head_dim)
        return len(base.model.layers), shape, p.dtype, p.device

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep these rows of the cache, in this order (indices into the current batch): drops
        finished rows, and with repeated indices copies a row (a shared prefill's samples)."""
        # index_select, not t[rows]: advanced indexing copies element by element, ~8x slower
        # here (a [8, 4, 70, 64] cache to 32 rows: 649 vs 76 us, 32 -> 16 rows: 286 vs 45 us);
        # into the spare buffers (kv_buffers.py), no allocation
        self.buffers.copy_rows(self.k[0].size(0), rows, self.col)
        self.k, self.v = self.buffers.views(rows.numel())
        self.valid = self.valid.index_select(0, rows)
        if self.bias is not None:  # rows of the additive mask come in blocks of H heads
            H = self.heads
            self.bias = self.bias.view(-1, H, *self.bias.shape[1:]).index_select(0, rows).flatten(0, 1)

    def _attend(self, q, k, v, mask, bias, scale):
        """Attention of q [B,H,L,D] over the cache. One query per row (decode) is done with
        two batched matmuls and an additive mask: for L=1, torch's CPU sdpa kernel costs
        several times more."""
        if q.size(2) > 1:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                                  enable_gqa=self.gqa)
        if self.gqa:
            rep = q.size(1) // k.size(1)
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = torch.baddbmm(bias, q.flatten(0, 1), k.flatten(0, 1).transpose(-1, -2),
                               alpha=scale)  # [B*H, 1, S]
        probs = torch.softmax(scores, dim=-1).view(q.size(0), q.size(1), 1, -1)
        return probs.to(v.dtype) @ v

    def attend_layer(self, i: int, q, k, v, c0: int, c1: int, mask, bias, scale):
        """Write layer i's new K/V ([B, kv, L, D]) at columns c0:c1 and attend over the cache."""
        self.k[i][:, :, c0:c1] = k
        self.v[i][:, :, c0:c1] = v
        return self._attend(q, self.k[i][:, :, :c1], self.v[i][:, :, :c1], mask, bias, scale)

    def _masks(self, B: int, L: int, c0: int, c1: int, device):
        """(boolean mask [B,1,L,c1] for L > 1, additive decode mask [B*H,1,c1] for L == 1).

        Query i (cache column c0+i) sees columns <= c0+i that hold real tokens, and itself
        (so a padding query never has an empty row, which would give NaN). A decode step's
        token is real in every row, so the additive mask only grows by a zero column: it is
        built once, after the prompt, and sliced from then on.
        """
        if L > 1:
            cols = torch.arange(c1, device=device)
            qcol = torch.arange(c0, c1, device=device)[:, None]
            mask = ((cols[None, :] <= qcol) & self.valid[:, None, :c1]) | (cols[None, :] == qcol)
            self.bias = None
            return mask[:, None], None
        if self.bias is None:  # the first decode step after the prompt
            cols = torch.arange(c1, device=device)
            seen = (cols[None, :] <= c0) & self.valid[:, :c1] | (cols[None, :] == c0)
            bias = torch.zeros(B, 1, self.valid.size(1), dtype=self.k[0].dtype, device=device)
            bias[:, 0, :c1] = bias[:, 0, :c1].masked_fill(~seen, float("-inf"))
            self.bias = bias.repeat_interleave(self.heads, dim=0)  # one row per (row, head)
        return None, self.bias[:, :, :c1]

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Feed ids [B, L] at positions pos [B, L]; returns the last position's logits [B, V]."""
        B, L = ids.shape
        c0, c1 = self.col, self.col + L
        self.valid[:, c0:c1] = valid
        mask, bias = self._masks(B, L, c0, c1, ids.device)
        h = self.inner.embed_tokens(ids)
        self.col = c1
        if self.fused is not None:
            if L == 1 and not self.gqa:
                return self.fused.step(self, h, pos, c0, bias)
            return self.fused.run(self, h, pos, c0, c1, mask, bias)
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # [B, 1, L, head_dim]
        for i, layer in enumerate(self.inner.layers):
            attn = layer.self_attn
            x = _rms(layer.input_layernorm, h)
            q = _lin(attn.q_proj, x).view(B, L, -1, self.head_dim)
            k = _lin(attn.k_proj, x).view(B, L, -1, self.head_dim)
            if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm per head before rotary
                q, k = _rms(attn.q_norm, q), _rms(attn.k_norm, k)
            n_q = q.size(2)
            qk = _rope(torch.cat([q, k], dim=2).transpose(1, 2), cos, sin)  # one pass for both
            v = _lin(attn.v_proj, x).view(B, L, -1, self.head_dim).transpose(1, 2)
            o = self.attend_layer(i, qk[:, :n_q], qk[:, n_q:], v, c0, c1, mask, bias, attn.scaling)
            h = h + _lin(attn.o_proj, o.transpose(1, 2).reshape(B, L, -1))
            h = h + _mlp(layer.mlp, _rms(layer.post_attention_layernorm, h))
        return _lin(self.lm_head, _rms(self.inner.norm, h[:, -1]))
