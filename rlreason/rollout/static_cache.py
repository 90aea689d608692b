"""A lean decode step for Llama-family models over a preallocated KV cache.

Why our own: for the small models that run on CPUs, a decode step is a handful of small
matmuls and transformers' per-step machinery (cache objects, mask builders, output
dataclasses, kwargs plumbing through every module) costs more than the arithmetic. This
step calls the model's own submodules (embeddings, norms, q/k/v/o projections, MLPs,
rotary embedding, lm_head), so weights, biases and peft LoRA layers are used exactly as
the model defines them; only cache handling and masking are ours. Supported:
Llama, Qwen2, Qwen3, Mistral (no sliding window); anything else falls back to the
transformers forward. Tests check the logits against the transformers forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

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


class StaticCacheDecoder:
    """Holds K/V of every layer as [B, kv_heads, max_len, head_dim] buffers.

    Rows are left-padded, so all rows write the same cache column at each step; `valid`
    [B, max_len] marks which columns hold real (non-padding) tokens.
    """

    def __init__(self, model, batch: int, max_len: int):
        base = _base(model)
        self.inner, self.lm_head = base.model, base.lm_head
        first = self.inner.layers[0].self_attn
        self.head_dim = first.head_dim
        p = next(base.parameters())
        kv = base.config.num_key_value_heads
        self.k = [torch.zeros(batch, kv, max_len, self.head_dim, dtype=p.dtype, device=p.device)
                  for _ in self.inner.layers]
        self.v = [torch.zeros_like(t) for t in self.k]
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=p.device)
        self.gqa = kv != base.config.num_attention_heads
        self.col = 0
        # cos/sin for every position, computed once: a table lookup per step instead of
        # the rotary module's half-dozen ops
        all_pos = torch.arange(max_len, device=p.device)[None]
        cos, sin = self.inner.rotary_emb(torch.zeros(1, dtype=p.dtype, device=p.device), all_pos)
        self.cos, self.sin = cos[0], sin[0]  # [max_len, head_dim]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop finished rows from the cache (rows: indices into the current batch)."""
        self.k = [t[rows] for t in self.k]
        self.v = [t[rows] for t in self.v]
        self.valid = self.valid[rows]

    def _attend(self, q, k, v, mask, bias, scale):
        """Attention of q [B,H,L,D] over the cache. One query per row (decode) is done with
        two batched matmuls and an additive mask built once per step: for L=1, torch's
        CPU sdpa kernel costs several times more."""
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

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Feed ids [B, L] at positions pos [B, L]; returns the last position's logits [B, V]."""
        B, L = ids.shape
        c0, c1 = self.col, self.col + L
        self.valid[:, c0:c1] = valid
        # query i (cache column c0+i) sees columns <= c0+i that hold real tokens, and itself
        # (so a padding query never has an empty row, which would give NaN)
        cols = torch.arange(c1, device=ids.device)
        qcol = torch.arange(c0, c1, device=ids.device)[:, None]
        mask = ((cols[None, :] <= qcol) & self.valid[:, None, :c1]) | (cols[None, :] == qcol)
        mask = mask[:, None]  # [B, 1, L, c1]
        bias = None
        if L == 1:  # additive form for the decode path, repeated per head: [B*H, 1, c1]
            H = self.inner.layers[0].self_attn.config.num_attention_heads
            bias = torch.zeros(mask.shape, dtype=self.k[0].dtype, device=ids.device)  # q's dtype
            bias = bias.masked_fill(~mask, float("-inf")).repeat_interleave(H, dim=0)[:, 0]
        h = self.inner.embed_tokens(ids)
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
            q, k = qk[:, :n_q], qk[:, n_q:]
            v = _lin(attn.v_proj, x).view(B, L, -1, self.head_dim).transpose(1, 2)
            self.k[i][:, :, c0:c1] = k
            self.v[i][:, :, c0:c1] = v
            o = self._attend(q, self.k[i][:, :, :c1], self.v[i][:, :, :c1], mask, bias,
                             attn.scaling)
            h = h + _lin(attn.o_proj, o.transpose(1, 2).reshape(B, L, -1))
            h = h + _mlp(layer.mlp, _rms(layer.post_attention_layernorm, h))
        self.col = c1
        return _lin(self.lm_head, _rms(self.inner.norm, h[:, -1]))
