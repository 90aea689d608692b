"""The end of a run: the trained model (or adapter) as a plain transformers/peft folder
with its model card, pushed to the hub when the recipe asks. Shared by the RL and SFT
loops; a module of its own so the loops keep only their wiring."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .hub import push_final
from .model_card import write_model_card
from .sharding import native_checkpoint


def export_final(run: Any, folder: Path) -> None:
    """`run`: the trainer's Run. Gathered from the shards first where training shards (a
    collective: every rank calls this); written by the main process."""
    sd = run.accelerator.get_state_dict(run.model) if native_checkpoint(run.accelerator) else None
    if run.accelerator.is_main_process:
        run.policy.save_pretrained(folder, **({"state_dict": sd} if sd is not None else {}))
        run.tokenizer.save_pretrained(folder)
        write_model_card(run.cfg, folder, Path(run.cfg.train.output_dir) / "metrics.jsonl")
        if run.cfg.train.push_to_hub:
            push_final(run.cfg.train, folder, step=run.step, log=run.logger.message if run.logger else print)
