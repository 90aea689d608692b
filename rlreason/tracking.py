"""Experiment trackers (`train.report_to`, TRL's name): every row that goes to metrics.jsonl
(training steps and evaluations, with their step) also goes to TensorBoard, Weights &
Biases, trackio or MLflow, and the resolved recipe is the tracked run's config.

Why accelerate's trackers rather than each client directly: the trainer already runs on an
`Accelerator`, whose trackers log from the main process only and know the four backends'
setup; rlreason adds the checks a user needs before a long run starts (the package is
installed) and the filtering the clients need (numbers only, no None or NaN).
metrics.jsonl stays the record: trackers are a view of it.
"""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

# report_to name -> (module to import, pip package)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "trackio": ("trackio", "trackio"), "mlflow": ("mlflow", "mlflow")}


def check_trackers(names: list[str]) -> None:
    """Stop before anything runs when a tracker's package is missing, with the pip command."""
    missing = [n for n in names if importlib.util.find_spec(TRACKERS[n][0]) is None]
    if missing:
        pkgs = " ".join(TRACKERS[n][1] for n in missing)
        raise ValueError(f"train.report_to: {', '.join(missing)} not installed; `pip install {pkgs}` "
                         "(or drop it from train.report_to)")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested recipe as flat dotted keys of numbers and strings (what every tracker takes)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        elif v is not None:
            out[key] = str(v)
    return out


def start_trackers(accelerator, cfg) -> None:
    """Open the run on every configured tracker (main process; accelerate's own guard)."""
    name = Path(cfg.train.output_dir).name or "run"
    if "trackio" in cfg.train.report_to:
        # trackio's local database goes under the run folder, like TensorBoard's event files,
        # unless the user chose a place (trackio reads TRACKIO_DIR once, when first imported)
        os.environ.setdefault("TRACKIO_DIR", str(Path(cfg.train.output_dir).resolve() / "trackio"))
    accelerator.init_trackers("rlreason", config=_flat(cfg.model_dump(mode="json")),
                              init_kwargs={"wandb": {"name": name}, "trackio": {"name": name}})


def tracked_values(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics row (no step, no None/NaN, no strings such as `strategy`)."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def finish_trackers(accelerator) -> None:
    """Close the trackers (flush files, end the remote run). Not `accelerator.end_training()`:
    that also destroys the process group, which a caller under `accelerate launch` may still
    use (`rlreason past` runs several stages in one process)."""
    if accelerator.is_main_process:
        for tracker in accelerator.trackers:
            tracker.finish()


def tracker_sink(accelerator, cfg):
    """Open the recipe's trackers (`train.report_to`) and return what sends them each
    metrics row; None without trackers. Called once the run folder is claimed."""
    if not cfg.train.report_to:
        return None
    start_trackers(accelerator, cfg)
    return lambda row: accelerator.log(tracked_values(row), step=int(row["step"]))
