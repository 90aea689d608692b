"""Who owns a run folder: one run writes to `train.output_dir`, and no other run's work is lost.

Why: a second launch into a finished run's folder used to delete its metrics, overwrite its
final model, and let checkpoint rotation (newest N by step) delete the *new* run's
checkpoints because the old run's sorted higher; `resume_from=latest` then resumed the old
run. So a run folder is claimed before anything is written into it:

- a fresh run needs an empty (or absent) folder; a used one is refused with the ways out:
  resume it (`train.resume_from=latest`), pick another folder, or replace it
  (`train.overwrite_output_dir=true`, TRL's name, which deletes the previous run's files);
- each run has an id, kept in `run.json` and in every checkpoint it writes; rotation and
  `latest` only ever consider checkpoints of the folder's own run id.

The check happens before the run is built and the claim (run.json) after, so a launch that
fails validation writes nothing. Under `accelerate launch` only the main process checks and
writes: the folder's state is read before any rank writes to it.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from .checkpoint import checkpoint_run_id, resolve_checkpoint
from .config import dump_config

RUN_FILE = "run.json"
# what a run writes into its folder: the previous run's copies go with overwrite_output_dir
RUN_ARTEFACTS = ("run.json", "config.yaml", "metrics.jsonl", "reward_curve.png", "hardness.json",
                 "checkpoints", "final", "rlreason")  # rlreason/: TensorBoard/trackio files (tracking.py)


class OutputDirError(ValueError):
    """train.output_dir cannot be used as asked (the message says why and what to do)."""


def is_main_process() -> bool:
    """The launcher's rank 0 (or a plain process), known before accelerate is set up."""
    return int(os.environ.get("RANK", "0")) == 0


def read_run_id(output_dir: str | Path) -> str | None:
    """The id of the run that owns `output_dir`; None for a folder without run.json (new,
    or written before run ids existed: its checkpoints carry no id either)."""
    f = Path(output_dir) / RUN_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())["run_id"]
    except (ValueError, KeyError, TypeError) as e:
        raise OutputDirError(f"{f}: not a run file written by rlreason ({e}); "
                             "delete it or use another train.output_dir") from None


def _contents(out: Path) -> list[str]:
    return sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir()) if out.is_dir() else []


def check_output_dir(output_dir: str | Path, *, resume_from: str | None, overwrite: bool,
                     checkpoint_run_id: str | None = None) -> str:
    """Decide, before anything is written, whether this launch may use `output_dir`; return
    the run id it will write under. Raises OutputDirError with the ways out.

    `checkpoint_run_id`: the run id recorded in the checkpoint a `resume_from` path names."""
    out = Path(output_dir)
    used = _contents(out)
    owner = read_run_id(out)
    if resume_from == "latest":
        if overwrite:
            raise OutputDirError("train.resume_from=latest with train.overwrite_output_dir=true: "
                                 "choose one (resume the run, or replace it)")
        return owner or ""  # "" = a folder from before run ids: its id-less checkpoints
    if resume_from:  # a checkpoint folder, maybe in another run's folder
        rid = checkpoint_run_id or ""
        if used and owner != (rid or None) and not overwrite:
            raise OutputDirError(
                f"train.output_dir={out} holds another run ({', '.join(used[:6])}) than the checkpoint "
                f"train.resume_from={resume_from}; resume into an empty folder, or replace its contents "
                "with train.overwrite_output_dir=true")
        return rid
    if used and not overwrite:
        raise OutputDirError(
            f"train.output_dir={out} is not empty ({', '.join(used[:6])}{', ...' if len(used) > 6 else ''}): "
            "resume that run with train.resume_from=latest, start fresh in another folder "
            "(train.output_dir=...), or replace it with train.overwrite_output_dir=true")
    return uuid.uuid4().hex[:12]


def claim_output_dir(output_dir: str | Path, run_id: str, *, overwrite: bool, resuming: bool) -> None:
    """Make `output_dir` this run's (main process, after validation): with overwrite, a fresh
    run first deletes the previous run's files (only those a run writes); then run.json."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and (not resuming or read_run_id(out) not in (None, run_id or None)):
        for name in RUN_ARTEFACTS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    if run_id:
        tmp = out / f".{RUN_FILE}.tmp"
        tmp.write_text(json.dumps({"run_id": run_id}) + "\n")
        os.replace(tmp, out / RUN_FILE)


def check_run_dir(cfg) -> tuple[str, Path | None]:
    """(run id, checkpoint to resume or None), once train.output_dir is known to be usable.
    Every rank reads the folder before the main one writes to it (after the run is built,
    whose model preparation every rank joins); the main one alone decides."""
    t = cfg.train
    ckpt = None
    if t.resume_from:
        owner = read_run_id(t.output_dir) if t.resume_from == "latest" else None
        ckpt = resolve_checkpoint(t.output_dir, t.resume_from, owner or "")
    if not is_main_process():
        return "", ckpt
    ckpt_id = checkpoint_run_id(ckpt) if ckpt is not None and t.resume_from != "latest" else None
    return check_output_dir(t.output_dir, resume_from=t.resume_from, overwrite=t.overwrite_output_dir,
                            checkpoint_run_id=ckpt_id), ckpt


def claim_run(cfg, accelerator, run_id: str, *, resuming: bool) -> str:
    """Once the run is built (the recipe validated): make train.output_dir this run's and
    write its config.yaml (main process); every rank then reads the run id."""
    out = Path(cfg.train.output_dir)
    if accelerator.is_main_process:
        claim_output_dir(out, run_id, overwrite=cfg.train.overwrite_output_dir, resuming=resuming)
        dump_config(cfg, out / "config.yaml")
    accelerator.wait_for_everyone()
    return read_run_id(out) or ""
