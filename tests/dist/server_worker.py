"""Run under `torchrun --nproc_per_node N` beside a running `rlreason serve`: a 2-step
data-parallel training run whose ranks all sample from that one server."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_cfg  # noqa: E402

from rlreason.trainer import train  # noqa: E402


def main(work: str, url: str) -> None:
    cfg = make_cfg(Path(work), "server-train", steps=2)
    rollout = cfg.rollout.model_copy(update={"backend": "server", "server_url": url})
    train(cfg.model_copy(update={"rollout": rollout}), log=lambda s: None)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
