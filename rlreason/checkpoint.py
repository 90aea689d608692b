"""Atomic checkpoints and exact resume.

A checkpoint is a folder `checkpoints/step_NNNNNN/` holding the model (full weights, or the
LoRA adapter alone) with its tokenizer, the optimizer and scheduler states, every RNG the
run draws from (Python, torch, the rollout sampler) and the data cursor. It is written to
a temporary folder first and renamed into place, so a crash mid-write never leaves a
checkpoint that looks complete; `latest` is the highest complete step.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.json"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def resolve_checkpoint(output_dir: str | Path, resume_from: str) -> Path:
    """'latest' -> newest complete checkpoint of output_dir; else a checkpoint folder."""
    if resume_from == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(
                f"train.resume_from=latest: no checkpoint in {checkpoint_root(output_dir)}")
        return found[-1]
    path = Path(resume_from)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"train.resume_from: {path} is not a checkpoint folder (no {STATE_FILE})")
    return path


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


SHARDED_DIR = "accelerate"  # model + optimizer shards, written by accelerate.save_state


def save_checkpoint(output_dir: str | Path, step: int, *, model, tokenizer, optimizer,
                    scheduler, state: dict[str, Any], extra_rng: dict[str, Any],
                    keep: int, accelerator=None, sharded: bool = False) -> Path:
    """Write checkpoint `step` atomically; keep the newest `keep` checkpoints.

    Every process calls this; the main one writes. With `sharded` (FSDP, DeepSpeed: the
    optimizer state, maybe the weights, live in per-rank shards) model and optimizer go
    through `accelerator.save_state`, which every rank joins, instead of whole files."""
    is_main = accelerator is None or accelerator.is_main_process
    barrier = accelerator.wait_for_everyone if accelerator is not None else (lambda: None)
    root = checkpoint_root(output_dir)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    if sharded:
        accelerator.save_state(str(tmp / SHARDED_DIR))
    if is_main:
        if not sharded:
            model.save_pretrained(tmp / "model")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        tokenizer.save_pretrained(tmp / "model")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({**rng_states(), **extra_rng}, tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=1))
        if final.exists():  # re-saving the same step (e.g. end of a resumed run)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_model_weights(model, folder: Path) -> None:
    """Load a checkpoint's weights into an already-built model (full or peft)."""
    from safetensors.torch import load_file

    adapter = folder / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(str(adapter)))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{adapter}: unexpected adapter keys {result.unexpected_keys[:5]}")
        return
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no safetensors weights to resume from")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    really_missing = [k for k in missing if k not in tied and "lm_head" not in k]
    if unexpected or really_missing:
        raise ValueError(
            f"{folder}: weights do not match the model (missing {really_missing[:5]}, "
            f"unexpected {unexpected[:5]})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def load_checkpoint(path: Path, *, model, optimizer, scheduler,
                    accelerator=None) -> tuple[dict, dict]:
    """Restore model, optimizer, scheduler and global RNGs; return (state, rng dict).
    A sharded checkpoint (see save_checkpoint) is restored by `accelerator.load_state`."""
    if (path / SHARDED_DIR).is_dir():
        if accelerator is None:
            raise ValueError(f"{path}: a sharded checkpoint (FSDP/DeepSpeed); resume it under the same "
                             "accelerate launch config")
        accelerator.load_state(str(path / SHARDED_DIR))
    else:
        load_model_weights(model, path / "model")
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = torch.load(path / "rng.pt", weights_only=False)
    set_rng_states(rng)
    state = json.loads((path / STATE_FILE).read_text())
    return state, rng
