"""Reusable K/V storage for the static-cache decode (static_cache.py).

Why: the cache of a rollout was allocated afresh, and so was every copy of it: a shared
prefill copied to its samples, each compaction as rows finish. On CPU, buffers this large
come from the OS on each allocation (glibc hands them back on free) and every first touch
of a page faults: ~7,800 minor faults a rollout of benchmarks/grpo_step_cpu.py's step,
and its row copies took 15-20 ms of a ~0.5 s rollout (2-core AMD EPYC, torch 2.13). Here
each layer's K and V live in two buffers of the full size, kept across rollouts by the hf
engine on CPU, through training steps too while they are small (KEEP_MAX_BYTES; vLLM
preallocates its KV cache for the same reason); a row copy writes the
kept rows from one into the other, and the two swap. The peak is two full caches, about
what the old path held during its first compaction (the old cache and a 3/4 copy).
"""
from __future__ import annotations

import torch

COLUMN_ROUND = 16  # lengths round up to this, so rollouts whose prompts differ by a token share buffers
KEEP_MAX_BYTES = 256 << 20  # kept while the trainer trains (engine.sleep) up to this size


class KVBuffers:
    """K and V of `layers` layers, each [rows, kv_heads, max_len, head_dim], twice."""

    def __init__(self, layers: int, shape: tuple[int, int, int, int], dtype, device):
        self.layers, self.shape, self.dtype, self.device = layers, shape, dtype, torch.device(device)
        self.front = [torch.empty(shape, dtype=dtype, device=device) for _ in range(2 * layers)]
        self.back = [torch.empty_like(t) for t in self.front]

    @property
    def nbytes(self) -> int:
        return 2 * sum(t.numel() * t.element_size() for t in self.front)

    def fits(self, layers: int, shape: tuple[int, int, int, int], dtype, device) -> bool:
        """Room for `shape`: as many rows or more, the rest the same."""
        return (layers, tuple(shape[1:]), dtype, torch.device(device)) == (
            self.layers, self.shape[1:], self.dtype, self.device) and shape[0] <= self.shape[0]

    def views(self, rows: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(K of each layer, V of each layer) for the first `rows` rows of the front buffers."""
        return [t[:rows] for t in self.front[: self.layers]], [t[:rows] for t in self.front[self.layers :]]

    def copy_rows(self, rows_now: int, rows: torch.Tensor, cols: int) -> None:
        """Front rows `rows` (indices among the first `rows_now`, repeats allowed) become the
        first len(rows) rows, for the first `cols` columns (the ones written so far)."""
        n = rows.numel()
        if n > self.shape[0]:
            raise ValueError(f"KVBuffers.copy_rows: {n} rows do not fit in {self.shape[0]}")
        # a strided copy of a few columns beats copying whole rows when they are a
        # quarter or less of the width (8 caches of [32, 4, 70, 64]: 7 columns 0.46 vs
        # 1.5 ms; 35 columns 1.6 vs 1.3 ms)
        few = 4 * cols <= self.shape[2]
        for src, dst in zip(self.front, self.back):
            if few:
                torch.index_select(src[:rows_now, :, :cols], 0, rows, out=dst[:n, :, :cols])
            else:
                torch.index_select(src[:rows_now], 0, rows, out=dst[:n])
        self.front, self.back = self.back, self.front
