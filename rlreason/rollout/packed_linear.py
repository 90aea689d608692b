"""A linear map whose weight is packed once for oneDNN, for the CPU decode loop.

Why: a decode step multiplies a few rows by every weight of every layer in turn, so no
weight is still in a core's cache when it is next used, and MKL's sgemm (torch's CPU
BLAS) repacks the weight on each such call. oneDNN's matmul on a weight packed
beforehand skips that. Measured by benchmarks/decode_linear.py on the 2-core AMD EPYC
without AVX-512 (torch 2.13, MKL 2024.2, oneDNN 3.12; 16 weights used in turn),
microseconds a call (benchmarks/results/decode_linear_cpu.json):

    weight [3h, h]    rows:   1           8           32
    h = 128                   13 vs 46    35 vs 58    66 vs 92     (MKL vs oneDNN packed)
    h = 192                   18 vs 70    82 vs 99    189 vs 189
    h = 256                   106 vs 127  196 vs 137  278 vs 222
    h = 512                   467 vs 293  619 vs 433  1136 vs 649

Whole rollouts of benchmarks/grpo_step_cpu.py's step, packing off and on in turn: 0.53 vs
0.48 s for its model (hidden 256; paired ratio 0.88), 5.66 vs 3.75 s for `--size large`
(hidden 768; 0.72). Below 2^17 weight elements oneDNN's fixed cost per call loses, so
small weights keep F.linear: the quickstart's model (hidden 128) decodes as before, bit
for bit. Above it MKL still wins for a single row (h 256: 106 vs 127 us), the late steps
of a rollout when one sample is left; over a rollout packing wins (above).

The ops are torch's own (`mkldnn._reorder_linear_weight`, `mkldnn._linear_pointwise`, which
inductor uses for its packed linears in some configurations; for float32 at a fixed batch it
packs for MKL instead, `mkl._mkl_linear`, which measured slower than oneDNN here: 524 vs
271 us for 32 rows x [1536, 256]). Compiling the decode step instead was slower (a
torch.compile'd prototype of the fused step, hidden 256: 7.3 ms at 32 rows and 5.8 ms at
1 row, against 7.6 and 3.0 ms for this eager one), and weights change every step, so a
frozen graph would recompile each time. Packing costs ~0.5 ms a weight, once per rollout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# weights with fewer elements keep F.linear (see the table above)
PACK_MIN_NUMEL = 1 << 17


def onednn_available() -> bool:
    """This torch has oneDNN, it is not switched off (torch.backends.mkldnn.enabled), and it
    has the two ops."""
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear:
    """y = x W^T + b, plus `residual` when given (fused into the matmul's output)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, rows_hint: int | None = None):
        self.weight, self.bias, self.packed = weight, bias, None
        if (weight.device.type == "cpu" and weight.dtype == torch.float32
                and weight.numel() >= PACK_MIN_NUMEL and onednn_available()):
            # a copy in oneDNN's layout; the plain weight is not held (no second copy)
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows_hint)
            self.weight = None

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.packed is None:
            if residual is None:
                return F.linear(x, self.weight, self.bias)
            if self.bias is None and x.dim() == 2:  # the residual add rides on the matmul
                return torch.addmm(residual, x, self.weight.t())
            return residual + F.linear(x, self.weight, self.bias)
        if residual is None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed, self.bias, "add")
