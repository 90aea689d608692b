"""Tensors from the trainer to a rollout server, over a process group of their own.

Why a separate group: the trainer may already be inside a data-parallel group (the default
one), and the server is not part of it. A TCPStore hosted by the trainer (rank 0) and a
ProcessGroupNCCL (GPU tensors: GPU to GPU, across nodes too) or ProcessGroupGloo (CPU)
built directly on it connect exactly the two sides. Tensors travel by broadcast from rank
0, in the order of a metadata list that goes over HTTP first, so nothing is written to disk
and no tensor is pickled.
"""
from __future__ import annotations

import datetime
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

PREFIX = "rlreason-transfer"


def free_port(host: str = "0.0.0.0") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class TransferGroup:
    group: Any
    store: Any  # held so the store outlives the group


def open_group(host: str, port: int, rank: int, world_size: int, backend: str,
               timeout_s: float = 300.0) -> TransferGroup:
    """Join the transfer group; rank 0 (the trainer) hosts the store. Blocks until every
    rank joined, so the two sides must call it concurrently."""
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
    prefixed = dist.PrefixStore(PREFIX, store)
    if backend == "nccl":
        group = dist.ProcessGroupNCCL(prefixed, rank, world_size)
    elif backend == "gloo":
        group = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
    else:
        raise ValueError(f"transfer backend {backend!r}: expected nccl or gloo")
    return TransferGroup(group, store)


def _broadcast(tg: TransferGroup, t: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank, opts.rootTensor = 0, 0
    tg.group.broadcast([t], opts).wait()


def tensor_meta(named: Iterable[tuple[str, torch.Tensor]]) -> list[list]:
    """[name, dtype, shape] per tensor: what the receiving side allocates."""
    return [[n, str(t.dtype).removeprefix("torch."), list(t.shape)] for n, t in named]


def send_tensors(group: TransferGroup, tensors: Iterable[torch.Tensor], device: torch.device) -> None:
    for t in tensors:
        _broadcast(group, t.detach().to(device).contiguous())
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def receive_tensors(group: TransferGroup, meta: list[list], device: torch.device) -> list[tuple[str, torch.Tensor]]:
    out = []
    for name, dtype, shape in meta:
        t = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
        _broadcast(group, t)
        out.append((name, t))
    return out
