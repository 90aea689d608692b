"""Atomic checkpoints and exact resume.

A checkpoint is a folder `checkpoints/step_NNNNNN/` holding the model (full weights, or the
LoRA adapter alone) with its tokenizer, the optimizer and scheduler states, every RNG the
run draws from (Python, torch, the rollout sampler) and the data cursor. It is written to
a temporary folder first and renamed into place, so a crash mid-write never leaves a
checkpoint that looks complete; `latest` is the highest complete step of the folder's own
run (run_dir.py: each checkpoint records its run id, and rotation never touches another
run's). Every file is read back with `torch.load(weights_only=True)`: what a checkpoint
holds besides tensors is plain types (numbers, strings, lists, tuples, dicts), so a crafted
pickle in a checkpoint is refused instead of executed.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

STATE_FILE = "trainer_state.json"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_run_id(path: Path) -> str:
    """The run id a checkpoint was written under ("" for one written before run ids)."""
    try:
        return str(json.loads((path / STATE_FILE).read_text()).get("run_id", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def list_checkpoints(output_dir: str | Path, run_id: str | None = None) -> list[Path]:
    """Complete checkpoints by step; with `run_id`, only that run's ("": those without one)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if (p / STATE_FILE).is_file()
            and (run_id is None or checkpoint_run_id(p) == run_id)]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def resolve_checkpoint(output_dir: str | Path, resume_from: str, run_id: str | None = None) -> Path:
    """'latest' -> newest complete checkpoint of output_dir's run; else a checkpoint folder."""
    if resume_from == "latest":
        found = list_checkpoints(output_dir, run_id)
        if not found:
            raise FileNotFoundError(
                f"train.resume_from=latest: no checkpoint in {checkpoint_root(output_dir)}"
                + (f" of run {run_id} (run.json)" if run_id else ""))
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
                    keep: int, accelerator=None, sharded: bool = False, run_id: str = "") -> Path:
    """Write checkpoint `step` atomically; keep the newest `keep` checkpoints of run `run_id`.

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
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, "run_id": run_id, **state}, indent=1))
        if final.exists():  # re-saving the same step (e.g. end of a resumed run)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir, run_id)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_model_weights(model, folder: Path) -> None:
    """Load a checkpoint's weights into an already-built model (full or peft)."""
    adapter = folder / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict  # lazily: peft is heavy, needed only to resume LoRA runs

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


def safe_load(file: Path) -> Any:
    """torch.load of tensors and plain types only; anything else is refused, not run."""
    try:
        return torch.load(file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{file}: refused to load: it holds Python objects other than tensors and plain types "
            f"({first}); rlreason never writes such a file, so it was changed or comes from "
            "elsewhere. Resume from another checkpoint") from None


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
        optimizer.load_state_dict(safe_load(path / "optimizer.pt"))
    scheduler.load_state_dict(safe_load(path / "scheduler.pt"))
    rng = safe_load(path / "rng.pt")
    set_rng_states(rng)
    state = json.loads((path / STATE_FILE).read_text())
    return state, rng
